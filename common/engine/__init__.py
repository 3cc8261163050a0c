"""The ignite glue shared by the bundles: checkpoints and resuming, experiment tracking."""

from common.engine.checkpoints import latest_checkpoint, prepare_checkpoint_dir
from common.engine.tracking import tracking_uri

__all__ = ["latest_checkpoint", "prepare_checkpoint_dir", "tracking_uri"]
