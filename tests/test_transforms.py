"""CT presets and the segmentation pipelines on a small synthetic NIfTI pair."""

import nibabel as nib
import numpy as np
import pytest
import torch

from common.transforms import (
    CT_WINDOWS,
    ct_window,
    segmentation_inference_transforms,
    segmentation_train_transforms,
    segmentation_val_transforms,
)


@pytest.fixture()
def case(tmp_path):
    """A 40x32x16 volume at 2x2x3 mm with a bright cube labelled 6 (liver)."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image = np.full((40, 32, 16), -1000, np.int16)
    image[5:35, 4:28, 2:14] = 40
    label = np.zeros(image.shape, np.uint8)
    label[10:20, 10:20, 5:10] = 6
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lbl.nii.gz")
    return {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lbl.nii.gz")}


@pytest.mark.parametrize("preset", sorted(CT_WINDOWS))
def test_ct_window_maps_interval_to_unit_range(preset):
    a_min, a_max = CT_WINDOWS[preset]
    hu = torch.tensor([[a_min - 100, a_min, (a_min + a_max) / 2, a_max, a_max + 100]])
    out = ct_window("image", preset)({"image": hu})["image"]
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))


def test_ct_window_unknown_preset():
    with pytest.raises(ValueError, match="known presets"):
        ct_window("image", "lung")


def test_train_pipeline_crops_and_windows(case):
    samples = segmentation_train_transforms(roi_size=(16, 16, 16), num_samples=3)(case)
    assert len(samples) == 3
    for sample in samples:
        assert sample["image"].shape == (1, 16, 16, 16) and sample["label"].shape == (1, 16, 16, 16)
        assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.1  # intensity shift 0.1
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 6.0}


def test_val_pipeline_resamples_to_pixdim(case):
    out = segmentation_val_transforms(pixdim=(1.5, 1.5, 1.5))(case)
    spacing = np.sqrt((out["image"].affine[:3, :3].numpy() ** 2).sum(0))
    assert np.allclose(spacing, 1.5)
    assert out["image"].shape == out["label"].shape
    assert float(out["image"].max()) <= 1.0 and 6 in torch.unique(out["label"]).tolist()


def test_inference_pipeline_is_invertible(case):
    preprocessing = segmentation_inference_transforms(pixdim=(1.5, 1.5, 1.5))
    out = preprocessing({"image": case["image"]})
    inverted = preprocessing.inverse({"image": out["image"]})["image"]
    assert inverted.shape == (1, 40, 32, 16)
    assert np.allclose(inverted.affine.numpy(), np.diag([2.0, 2.0, 3.0, 1.0]))
