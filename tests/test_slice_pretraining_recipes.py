"""The 2D study's pre-training input (Wolf et al., Sci. Rep. 2023): the data set's mean / std, estimated from a
deterministic sample of slices and cached on disk, applied last in every pipeline and carried to inference by the
checkpoint's ``network_spec``; and each method's augmentations as the recipe names them (the paper's Supplementary
Tables 4-7 for ``paper``)."""

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, NormalizeIntensityd, OneOf, RandFlipd, RandomOrder
from PIL import Image

from common.previews import HEADER_HEIGHT, orthogonal_slices_png
from common.transforms import slices
from common.transforms.slices import IMAGENET_GREY_INTENSITY, intensity_statistics, normalisation_statistics
from common.transforms.views2d import MultiViewd, augmented_view
from conftest import REPO_ROOT

BUNDLES = ("spark2d_pretrain", "moco2d_pretrain", "byol2d_pretrain", "swav2d_pretrain")
# Supplementary Table 7 (SparK): "Augmentations horizontal flip, crop"; Tables 4 and 6 (MoCo, BYOL): "Transforms crop,
# horizontal flip, gaussian blur"; Table 5 (SwAV): "Transforms gaussian blur, crop". The operations each builds, in
# the order applied, normalisation last (per view for the contrastive methods).
PAPER = {
    "spark2d_pretrain": (["crop", "flip"], ["RandResizedCropd", "RandFlipd(1)", "NormalizeIntensityd"]),
    "moco2d_pretrain": (["crop", "flip", "blur"],
                        ["RandResizedCropd", "RandGaussianSmoothd", "RandFlipd(1)", "NormalizeIntensityd"]),
    "byol2d_pretrain": (["crop", "flip", "blur"],
                        ["RandResizedCropd", "RandGaussianSmoothd", "RandFlipd(1)", "NormalizeIntensityd"]),
    "swav2d_pretrain": (["blur", "crop"], ["RandResizedCropd", "RandGaussianSmoothd", "NormalizeIntensityd"]),
}
LOADING = {"LoadImaged", "CheckFinited", "SliceToUnitd"}


def write_slices(folder, count=5, seed=0):
    """``count`` random 8-bit grey PNG slices of different sizes; returns the datalist and their pixels in [0, 1]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items, pixels = [], []
    for index in range(count):
        values = rng.integers(0, 256, size=(6 + index, 8 + 2 * index), dtype=np.uint8)
        path = folder / f"slice_{index}.png"
        Image.fromarray(values, mode="L").save(path)
        items.append({"image": str(path)})
        pixels.append(values.astype(np.float64).ravel() / 255.0)
    return items, pixels


@pytest.fixture
def counted_reads(monkeypatch):
    """Replace the slice reader of :func:`intensity_statistics` by one that records the files it is given."""
    calls = []

    def read(files):
        calls.append([path for path, _, _ in files])
        return 0.5, 0.25

    monkeypatch.setattr(slices, "_read_statistics", read)
    return calls


def test_sampled_statistics_equal_the_exact_ones_when_every_slice_is_sampled(tmp_path):
    items, pixels = write_slices(tmp_path)
    every = np.concatenate(pixels)
    for samples in (None, len(items), 100):
        mean, std = intensity_statistics(items, samples=samples)
        assert mean == pytest.approx(every.mean(), abs=1e-7) and std == pytest.approx(every.std(), abs=1e-7)


def test_the_sample_is_deterministic_for_a_seed(tmp_path, counted_reads):
    items, _ = write_slices(tmp_path, count=6)
    intensity_statistics(items, samples=3, seed=0)
    intensity_statistics(items, samples=3, seed=0)
    intensity_statistics(items, samples=3, seed=1)
    first, again, other = counted_reads
    assert len(first) == 3 and len(set(first)) == 3 and first == again and other != first
    assert first == sorted(first)  # read in the datalist's order


def test_the_sampled_statistics_are_the_exact_statistics_of_the_sampled_slices(tmp_path):
    items, pixels = write_slices(tmp_path, count=6)
    mean, std = intensity_statistics(items, samples=3, seed=0)
    chosen = np.sort(np.random.default_rng(0).choice(6, size=3, replace=False))
    exact = np.concatenate([pixels[index] for index in chosen])
    assert mean == pytest.approx(exact.mean(), abs=1e-7) and std == pytest.approx(exact.std(), abs=1e-7)
    assert (mean, std) == intensity_statistics([items[index] for index in chosen])


def test_statistics_are_cached_on_disk_by_the_sampled_files(tmp_path, counted_reads):
    items, _ = write_slices(tmp_path / "slices")
    cache = tmp_path / "cache"
    assert intensity_statistics(items, samples=3, cache_dir=cache) == (0.5, 0.25)
    (written,) = cache.glob("intensity_statistics_*.json")
    assert json.loads(written.read_text()) == {"mean": 0.5, "std": 0.25, "slices": 3}
    assert intensity_statistics(items, samples=3, cache_dir=cache) == (0.5, 0.25)
    assert len(counted_reads) == 1  # the second call read the cache, not the slices
    intensity_statistics(items, samples=4, cache_dir=cache)  # another sample: read, cached beside
    assert len(counted_reads) == 2 and len(list(cache.glob("intensity_statistics_*.json"))) == 2
    for path in counted_reads[0]:  # a sampled slice rewritten: read again
        Image.fromarray(np.zeros((3, 3), np.uint8), mode="L").save(path)
    intensity_statistics(items, samples=3, cache_dir=cache)
    assert len(counted_reads) == 3
    # a distributed run's other processes read the cache but leave a missing one to the first
    assert intensity_statistics(items, samples=3, cache_dir=cache, write_cache=False) and len(counted_reads) == 3
    other = tmp_path / "other_cache"
    intensity_statistics(items, samples=2, cache_dir=other, write_cache=False)
    assert len(counted_reads) == 4 and not other.exists()


def test_normalisation_names_and_pairs(tmp_path, counted_reads):
    items, _ = write_slices(tmp_path)
    assert normalisation_statistics("dataset", items, samples=2) == [0.5, 0.25]
    assert normalisation_statistics("imagenet", items) == list(IMAGENET_GREY_INTENSITY)
    assert normalisation_statistics("none", items) is None
    assert normalisation_statistics([0.1806, 0.1907], items) == [0.1806, 0.1907]  # the official contrastive code's
    assert len(counted_reads) == 1  # only "dataset" reads
    with pytest.raises(ValueError, match="unknown normalisation 'datset'"):
        normalisation_statistics("datset", items)
    with pytest.raises(ValueError, match=r"\[mean, std > 0\]"):
        normalisation_statistics([0.5, 0.0], items)


def test_a_view_builds_exactly_the_named_augmentations_and_needs_a_crop():
    view = augmented_view(16, (0.5, 1.0), augmentations=["flip", "crop"], intensity=(0.5, 0.25))
    assert operations(view) == ["RandResizedCropd", "RandFlipd(1)", "NormalizeIntensityd"]
    out = view({"image": torch.full((1, 20, 20), 0.75)})["image"]
    assert out.shape == (1, 16, 16) and torch.allclose(out, torch.ones_like(out))  # (0.75 - 0.5) / 0.25
    with pytest.raises(ValueError, match="unknown augmentations \\['solarize'\\]"):
        augmented_view(16, (0.5, 1.0), augmentations=["crop", "solarize"])
    with pytest.raises(ValueError, match="add 'crop'"):
        augmented_view(16, (0.5, 1.0), augmentations=["flip", "blur"])


def operations(transform) -> list[str]:
    """The augmentation and normalisation steps of a pipeline, flattened, in order (loading left out; a flip with its
    spatial axis; a multi-view pipeline's views one after another)."""
    if isinstance(transform, (Compose, RandomOrder, OneOf)):
        return [name for step in transform.transforms for name in operations(step)]
    if isinstance(transform, MultiViewd):
        return [name for _, augment in transform.views.values() for name in operations(augment)]
    name = type(transform).__name__
    if isinstance(transform, RandFlipd):
        return [f"{name}({transform.flipper.spatial_axis})"]
    return [] if name in LOADING else [name]


def normalisations(transform) -> list[tuple[float, float]]:
    """``(subtrahend, divisor)`` of every ``NormalizeIntensityd`` of a pipeline."""
    if isinstance(transform, (Compose, RandomOrder, OneOf)):
        return [pair for step in transform.transforms for pair in normalisations(step)]
    if isinstance(transform, MultiViewd):
        return [pair for _, augment in transform.views.values() for pair in normalisations(augment)]
    if isinstance(transform, NormalizeIntensityd):
        return [(transform.normalizer.subtrahend, transform.normalizer.divisor)]
    return []


def train_config(bundle, tmp_path, **settings) -> ConfigParser:
    """The bundle's ``train.json`` on a few tiny slices, its outputs (the statistics' cache) under ``tmp_path``."""
    write_slices(tmp_path / "slices")
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser.update({"dataset_dir": str(tmp_path / "slices"), "output_dir": str(tmp_path / "eval"), **settings})
    return parser


@pytest.mark.parametrize("bundle", BUNDLES)
def test_the_paper_recipe_augments_as_its_table_and_normalises_with_the_data_sets_statistics(
    bundle, tmp_path, monkeypatch
):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parser = train_config(bundle, tmp_path, cpu_demo_scale=False)
    augmentations, expected = PAPER[bundle]
    assert parser.get_parsed_content("recipe") == "paper"
    assert parser.get_parsed_content("augmentations") == augmentations
    assert parser.get_parsed_content("normalisation") == "dataset"
    pipeline = parser.get_parsed_content("train#preprocessing")
    views = 2 if bundle == "swav2d_pretrain" else 1  # SwAV: the global and the local crops, each normalised
    assert operations(pipeline) == expected * views

    mean, std = intensity_statistics(parser.get_parsed_content("datalist"))  # all 5 slices: below the 1000 sampled
    assert parser.get_parsed_content("intensity") == pytest.approx([mean, std])
    assert normalisations(pipeline) == [pytest.approx((mean, std))] * views
    logged = parser.get_parsed_content("hyper_parameters")
    assert (logged["intensity_mean"], logged["intensity_std"]) == pytest.approx((mean, std))
    assert list((tmp_path / "eval" / "dataset_cache").glob("intensity_statistics_*.json"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_normalises_with_the_statistics_of_training(bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parser = train_config(bundle, tmp_path, cpu_demo_scale=False)
    intensity = parser.get_parsed_content("intensity")
    checkpoint = tmp_path / "model.pt"  # what the training run's CheckpointSaver writes beside the weights
    torch.save({"network_spec": parser.get_parsed_content("network_spec").state_dict()}, checkpoint)

    inference = ConfigParser()
    inference.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "inference.json"))
    inference.update({"pretrained": str(checkpoint), "input": str(tmp_path / "slices")})
    preprocessing = inference.get_parsed_content("preprocessing")
    assert normalisations(preprocessing) == [pytest.approx(tuple(intensity))]
    assert operations(preprocessing)[-1] == "NormalizeIntensityd"  # the last step
    if bundle == "spark2d_pretrain":  # the exported PNGs undo it
        assert inference.get_parsed_content("postprocessing").intensity == pytest.approx(intensity)

    # a plain state dict (no network_spec) takes the statistics from the command line
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    inference.update({"pretrained": str(plain), "intensity": [0.2, 0.3]})
    assert normalisations(inference.get_parsed_content("preprocessing", lazy=False)) == [pytest.approx((0.2, 0.3))]


def test_previews_undo_the_normalisation(tmp_path):
    image = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    path = orthogonal_slices_png({"input": (image - 0.4) / 0.2}, tmp_path / "a.png", upscale=1, intensity=(0.4, 0.2))
    shown = np.asarray(Image.open(path))[HEADER_HEIGHT:].astype(float) / 255
    assert np.allclose(shown, image[0].numpy(), atol=0.5 / 255)
