"""Datalists from MSD ``dataset.json`` / NIfTI folders / DICOM series, splits, and the demo phantoms."""

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
from common.data.dicom import DicomSeriesReader
from common.data.errors import DatalistError

__all__ = [
    "BTCV_LABELS",
    "DatalistError",
    "DicomSeriesReader",
    "datalist_from_dicom_folder",
    "datalist_from_msd",
    "datalist_from_nifti_folder",
    "ensure_demo_data",
    "generate_phantom",
    "image_loader",
    "inference_datalist",
    "pretraining_datalist",
    "load_datalist",
    "split_datalist",
    "training_split",
]
