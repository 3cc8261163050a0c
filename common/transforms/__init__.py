"""CT intensity presets and the standard MONAI transform pipelines of the collection."""

from common.transforms.classification import (
    classification_postprocessing,
    classification_preprocessing,
    classification_train_transforms,
)
from common.transforms.ct import CT_WINDOWS, ct_window
from common.transforms.pretraining import pretraining_inference_transforms, pretraining_train_transforms
from common.transforms.segmentation import (
    segmentation_inference_transforms,
    segmentation_postprocessing,
    segmentation_train_transforms,
    segmentation_val_transforms,
)

__all__ = [
    "CT_WINDOWS",
    "classification_postprocessing",
    "classification_preprocessing",
    "classification_train_transforms",
    "ct_window",
    "pretraining_inference_transforms",
    "pretraining_train_transforms",
    "segmentation_inference_transforms",
    "segmentation_postprocessing",
    "segmentation_train_transforms",
    "segmentation_val_transforms",
]
