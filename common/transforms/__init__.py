"""CT intensity presets and the standard MONAI transform pipelines of the collection."""

from common.transforms.classification import (
    classification_postprocessing,
    classification_preprocessing,
    classification_train_transforms,
)
from common.transforms.ct import CT_WINDOWS, ct_window, load_ct
from common.transforms.pretraining import (
    pretraining_inference_transforms,
    pretraining_train_transforms,
    reconstruction_postprocessing,
)
from common.transforms.views import RandGlobalLocalViewsd, global_local_train_transforms
from common.transforms.segmentation import (
    segmentation_inference_transforms,
    segmentation_postprocessing,
    segmentation_train_transforms,
    segmentation_val_transforms,
)

__all__ = [
    "CT_WINDOWS",
    "RandGlobalLocalViewsd",
    "classification_postprocessing",
    "classification_preprocessing",
    "classification_train_transforms",
    "ct_window",
    "global_local_train_transforms",
    "load_ct",
    "pretraining_inference_transforms",
    "pretraining_train_transforms",
    "reconstruction_postprocessing",
    "segmentation_inference_transforms",
    "segmentation_postprocessing",
    "segmentation_train_transforms",
    "segmentation_val_transforms",
]
