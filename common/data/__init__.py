"""Datalists from MSD ``dataset.json`` / NIfTI folders / DICOM series / 2D slices, splits, the demo data, the cache of
a bundle's training data, and segmentation task presets resolved against a data set's ``dataset.json``."""

from common.data.cache import CACHE_MODES, training_dataset
from common.data.classification import (
    ClassProbabilityWriter,
    class_names,
    classification_datalist,
    classification_split,
    datalist_from_class_folders,
    datalist_from_class_json,
)
from common.data.datalist import (
    datalist_from_dicom_folder,
    datalist_from_msd,
    datalist_from_nifti_folder,
    image_loader,
    inference_datalist,
    pretraining_datalist,
    load_datalist,
    split_datalist,
    training_split,
)
from common.data.demo import BTCV_LABELS, ensure_demo_data, generate_phantom
from common.data.demo_classification import ensure_classification_demo_data
from common.data.demo_slices_classification import ensure_slice_classification_demo_data
from common.data.dicom import DicomSeriesReader
from common.data.folds import check_stratified_folds, stratified_cross_validation, stratified_split, stratified_subset
from common.data.errors import BadInputError, BadInputPolicy, DatalistError, UnreadableFileError
from common.data.grey_values import SLICE_WINDOWS, hu_to_uint8, hu_to_unit
from common.data.nifti import VerifiedNibabelReader
from common.data.screening import screen_datalist, screen_splits
from common.data.slice_classification import slice_classification_datalist
from common.data.slices import ensure_slice_demo_data, slice_datalist
from common.data.tasks import label_table, modality_table, task_settings

__all__ = [
    "BTCV_LABELS",
    "CACHE_MODES",
    "BadInputError",
    "BadInputPolicy",
    "ClassProbabilityWriter",
    "DatalistError",
    "DicomSeriesReader",
    "SLICE_WINDOWS",
    "UnreadableFileError",
    "VerifiedNibabelReader",
    "check_stratified_folds",
    "class_names",
    "classification_datalist",
    "classification_split",
    "datalist_from_class_folders",
    "datalist_from_class_json",
    "datalist_from_dicom_folder",
    "datalist_from_msd",
    "datalist_from_nifti_folder",
    "ensure_classification_demo_data",
    "ensure_demo_data",
    "ensure_slice_classification_demo_data",
    "ensure_slice_demo_data",
    "generate_phantom",
    "hu_to_uint8",
    "hu_to_unit",
    "image_loader",
    "inference_datalist",
    "label_table",
    "pretraining_datalist",
    "screen_datalist",
    "screen_splits",
    "slice_datalist",
    "load_datalist",
    "modality_table",
    "slice_classification_datalist",
    "split_datalist",
    "stratified_cross_validation",
    "stratified_split",
    "stratified_subset",
    "task_settings",
    "training_dataset",
    "training_split",
]
