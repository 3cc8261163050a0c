"""The ignite glue shared by the bundles: checkpoints and resuming, experiment tracking, and the
self-supervised trainer with its schedules, momentum teacher, reconstruction snapshots and export."""

from common.engine.checkpoints import latest_checkpoint, prepare_checkpoint_dir
from common.engine.ema import MomentumTeacher
from common.engine.embeddings import export_embeddings
from common.engine.export import MaskedReconstructionInferer
from common.engine.freezing import HeadFirstFineTuning
from common.engine.gradcam import GradCamSaver, save_gradcam_overlays
from common.engine.schedules import (
    CosineSchedule,
    lr_schedule,
    param_groups,
    warmup_cosine,
    weight_decay_schedule,
)
from common.engine.progress import TrainingProgress
from common.engine.snapshots import ReconstructionSnapshots, orthogonal_slices_png
from common.engine.tracking import tracking_uri
from common.engine.trainer import OptimizerEvents, SelfSupervisedTrainer, logged_scalars

__all__ = [
    "CosineSchedule",
    "GradCamSaver",
    "HeadFirstFineTuning",
    "MaskedReconstructionInferer",
    "MomentumTeacher",
    "OptimizerEvents",
    "ReconstructionSnapshots",
    "SelfSupervisedTrainer",
    "TrainingProgress",
    "export_embeddings",
    "latest_checkpoint",
    "logged_scalars",
    "lr_schedule",
    "orthogonal_slices_png",
    "param_groups",
    "prepare_checkpoint_dir",
    "save_gradcam_overlays",
    "tracking_uri",
    "warmup_cosine",
    "weight_decay_schedule",
]
