"""The ignite glue shared by the bundles: checkpoints and resuming, experiment tracking, the run guards (non-finite
values, Ctrl-C, validation at the last epoch, the loss in the progress bar), inference's output policy (weights must
exist, earlier outputs are never overwritten unasked), the global batch on any number of processes, segmentation
metrics in mm per case and class, and the self-supervised trainer with its schedules, momentum teacher,
reconstruction snapshots and export."""

from common.engine.batches import batch_files
from common.engine.checkpoints import latest_checkpoint, prepare_checkpoint_dir
from common.engine.ema import MomentumTeacher
from common.engine.embeddings import EmbeddingsWriter, PooledFeaturesInferer
from common.engine.export import MaskedReconstructionInferer
from common.engine.f1 import positive_class_index, study_f1
from common.engine.freezing import HeadFirstFineTuning
from common.engine.global_batch import accumulation_steps, world_size
from common.engine.gradcam import GradCamSaver, save_gradcam_overlays
from common.engine.interrupt import GracefulInterrupt, exit_if_interrupted
from common.engine.metrics import HausdorffDistanceMM, PerCaseMetrics, SurfaceDiceMM, class_metric_names
from common.engine.nonfinite import NonFiniteGuard
from common.engine.outputs import prepare_output_dir, require_weights
from common.engine.progress_bar import ProgressBar
from common.engine.resume import MidEpochResume
from common.engine.schedules import (
    CosineSchedule,
    lr_schedule,
    param_groups,
    warmup_cosine,
    weight_decay_schedule,
)
from common.engine.progress import TrainingProgress
from common.engine.snapshots import ReconstructionSnapshots
from common.engine.tracking import RunParameters, keep_one_mlflow_handler, tracking_uri
from common.engine.trainer import OptimizerEvents, SelfSupervisedTrainer, logged_scalars
from common.engine.trainer_state import TrainerState
from common.engine.validation import PeriodicValidation

__all__ = [
    "CosineSchedule",
    "EmbeddingsWriter",
    "GracefulInterrupt",
    "GradCamSaver",
    "HausdorffDistanceMM",
    "HeadFirstFineTuning",
    "MaskedReconstructionInferer",
    "MidEpochResume",
    "MomentumTeacher",
    "NonFiniteGuard",
    "OptimizerEvents",
    "PerCaseMetrics",
    "PeriodicValidation",
    "PooledFeaturesInferer",
    "ProgressBar",
    "ReconstructionSnapshots",
    "RunParameters",
    "SelfSupervisedTrainer",
    "SurfaceDiceMM",
    "TrainerState",
    "TrainingProgress",
    "accumulation_steps",
    "batch_files",
    "class_metric_names",
    "exit_if_interrupted",
    "keep_one_mlflow_handler",
    "latest_checkpoint",
    "logged_scalars",
    "lr_schedule",
    "param_groups",
    "positive_class_index",
    "prepare_checkpoint_dir",
    "prepare_output_dir",
    "require_weights",
    "save_gradcam_overlays",
    "study_f1",
    "tracking_uri",
    "warmup_cosine",
    "weight_decay_schedule",
    "world_size",
]
