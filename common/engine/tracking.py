"""Experiment tracking: MLflow with a sqlite store inside the bundle unless the user names one."""

from __future__ import annotations

import os
from pathlib import Path

from monai.utils import path_to_sqlite_uri


def tracking_uri(output_dir: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a sqlite store at ``<output_dir>/mlruns.db``.

    MONAI 1.6 rejects a plain folder as tracking URI (MLflow's file store is deprecated), hence sqlite.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(str(Path(output_dir) / "mlruns.db"))
