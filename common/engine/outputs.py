"""Inference output policy: weights must exist before anything runs, and earlier outputs are never overwritten unasked.

An inference run (``configs/inference.json``) checks both in its ``initialize`` section, before it reads any
image, so a missing or misplaced file costs one line of explanation instead of a traceback half-way through:

* :func:`require_weights`: the network weights exist, else how to get them;
* :func:`prepare_output_dir`: the output folder holds nothing yet, unless ``--overwrite true``.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def require_weights(path: str | Path, bundle_root: str | Path, setting: str = "ckpt_path") -> str:
    """``path`` if it is a file, else an error that says how to get weights.

    Args:
        path: the weights inference loads (``models/model.pt`` by default).
        bundle_root: the bundle's folder, for the commands the message suggests.
        setting: the config setting that names the weights, for the message.

    Returns:
        ``path`` as a string.

    Raises:
        FileNotFoundError: ``path`` does not exist; the message names it and the three ways to weights.
    """
    if Path(path).is_file():
        return str(path)
    bundle_root = Path(bundle_root)
    raise FileNotFoundError(
        f"no weights at {path}: train this bundle first (python -m monai.bundle run --config_file "
        f"{bundle_root / 'configs' / 'train.json'}; downstream bundles can start from pre-trained weights with "
        "--pretrained <pre-training bundle>/models/model.pt), or unpack a packaged artifact of this bundle "
        f"(python -m monai.bundle download --name <bundle> --url <artifact zip>), or point --{setting} at weights"
    )


def prepare_output_dir(output_dir: str | Path, overwrite: bool = False) -> str:
    """Create ``output_dir``; refuse one that already holds files unless ``overwrite``.

    Args:
        output_dir: where the run writes its outputs.
        overwrite: write into a folder that holds earlier outputs, replacing files of the same names.

    Returns:
        ``output_dir`` as a string.

    Raises:
        FileExistsError: ``output_dir`` holds files and ``overwrite`` is false; the message names one of them and
            says how to go on.
    """
    output_dir = Path(output_dir)
    earlier = sorted(path for path in output_dir.rglob("*") if path.is_file()) if output_dir.is_dir() else []
    if earlier and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds {len(earlier)} file(s) of an earlier run, e.g. {earlier[0]}; pass "
            "--overwrite true to replace them, or --output_dir <new folder>"
        )
    if earlier:
        logger.warning("--overwrite: files of an earlier run in %s may be replaced", output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return str(output_dir)
