"""Checkpoint folder policy: resume from the last training state, never silently overwrite a finished run.

A training bundle writes into ``<bundle>/models/``:

* ``model.pt``: the best network weights (key validation metric), what fine-tuning and inference load;
* ``checkpoint_*.pt``: the latest full training state (network, optimizer, trainer), saved every
  epoch and when the run ends or is interrupted;
* ``series/checkpoint_epoch=<n>.pt``: the weights every ``checkpoint_series_interval`` epochs (the 2D pre-training
  bundles; ``tools.reduction`` picks the epoch with the best downstream F1 from them).

``--resume true`` continues from the newest ``checkpoint_*.pt``. A fresh run that finds earlier files
archives them in ``models/previous/<timestamp>/`` and says so, so nothing is lost: the training states and the series
are moved there (a later ``--resume`` must not find them, a new series must not mix with the old), the weights are
copied and stay in place until the new run
overwrites them, so the run can start from them (MONAI Label's bundle trainer loads ``models/model.pt`` before its
first step).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_GLOB = "checkpoint_*.pt"
SERIES_DIR = "series"


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The most recently written ``checkpoint_*.pt`` in ``ckpt_dir``, or ``None``."""
    checkpoints = sorted(Path(ckpt_dir).glob(CHECKPOINT_GLOB), key=lambda p: p.stat().st_mtime)
    return checkpoints[-1] if checkpoints else None


def prepare_checkpoint_dir(ckpt_dir: str | Path, resume: bool = False) -> str | None:
    """Get ``ckpt_dir`` ready for a training run.

    Args:
        ckpt_dir: the bundle's ``models/`` folder (created if needed).
        resume: continue the interrupted run whose training state is in ``ckpt_dir``.

    Returns:
        The checkpoint to resume from when ``resume``, else ``None``.

    Raises:
        FileNotFoundError: ``resume`` is set but ``ckpt_dir`` holds no ``checkpoint_*.pt``.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        checkpoint = latest_checkpoint(ckpt_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume true, but {ckpt_dir} holds no {CHECKPOINT_GLOB} to resume from")
        logger.info("resuming training from %s", checkpoint)
        return str(checkpoint)
    earlier = sorted(p for p in ckpt_dir.glob("*.pt"))
    series = ckpt_dir / SERIES_DIR
    if series.is_dir() and any(series.iterdir()):
        earlier.append(series)
    if earlier:
        archive = ckpt_dir / "previous" / time.strftime("%Y%m%d_%H%M%S")
        archive.mkdir(parents=True)
        for path in earlier:
            if path == series or path.match(CHECKPOINT_GLOB):
                shutil.move(str(path), archive / path.name)
            else:
                shutil.copy2(path, archive / path.name)
        logger.warning(
            "%s held files of an earlier run (%s); archived them in %s. Use --resume true to continue a run instead.",
            ckpt_dir,
            ", ".join(p.name for p in earlier),
            archive,
        )
    return None
