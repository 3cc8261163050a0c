"""CT intensity presets and the standard MONAI transform pipelines of the collection."""

from common.transforms.checks import CheckCTd, CheckFinited, CheckLabelsd, checked_loader, ct_checks
from common.transforms.classification import (
    classification_postprocessing,
    classification_preprocessing,
    classification_train_transforms,
)
from common.transforms.ct import CT_WINDOWS, ct_window, load_ct
from common.transforms.prepare import prepare_ct, prepare_slices
from common.transforms.pretraining import (
    pretraining_inference_transforms,
    pretraining_train_transforms,
    reconstruction_postprocessing,
)
from common.transforms.slice_pretraining import (
    SaveReconstructionPngd,
    slice_inference_transforms,
    slice_pretraining_transforms,
)
from common.transforms.slice_classification import (
    slice_classification_preprocessing,
    slice_classification_train_transforms,
)
from common.transforms.slices import (
    intensity_normalisation,
    intensity_statistics,
    load_slice_transforms,
    normalisation_statistics,
)
from common.transforms.views import RandGlobalLocalViewsd, global_local_train_transforms
from common.transforms.views2d import (
    MultiViewd,
    RandResizedCropd,
    augmented_view,
    contrastive_augmentations,
    grey_jitter,
    multi_crop_train_transforms,
    swav_augmentations,
    two_view_train_transforms,
)
from common.transforms.segmentation import (
    segmentation_inference_transforms,
    segmentation_postprocessing,
    segmentation_train_transforms,
    segmentation_val_transforms,
)

__all__ = [
    "CT_WINDOWS",
    "CheckCTd",
    "CheckFinited",
    "CheckLabelsd",
    "MultiViewd",
    "RandGlobalLocalViewsd",
    "RandResizedCropd",
    "SaveReconstructionPngd",
    "augmented_view",
    "checked_loader",
    "classification_postprocessing",
    "classification_preprocessing",
    "classification_train_transforms",
    "contrastive_augmentations",
    "ct_checks",
    "ct_window",
    "global_local_train_transforms",
    "grey_jitter",
    "intensity_normalisation",
    "intensity_statistics",
    "load_ct",
    "load_slice_transforms",
    "multi_crop_train_transforms",
    "normalisation_statistics",
    "prepare_ct",
    "prepare_slices",
    "pretraining_inference_transforms",
    "pretraining_train_transforms",
    "reconstruction_postprocessing",
    "segmentation_inference_transforms",
    "segmentation_postprocessing",
    "segmentation_train_transforms",
    "segmentation_val_transforms",
    "slice_classification_preprocessing",
    "slice_classification_train_transforms",
    "slice_inference_transforms",
    "slice_pretraining_transforms",
    "swav_augmentations",
    "two_view_train_transforms",
]
