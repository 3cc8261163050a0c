"""A pre-training bundle's data pipeline against the size of its data set: memory, time to the first batch, rate.

:func:`loader_run` builds a bundle's ``train#dataloader`` exactly as ``monai.bundle run`` does (``train.json`` +
``smoke.json`` and the given settings) in the calling process and reads batches from it; run it in a fresh process
(:func:`tools.measure.in_fresh_process`) so its peak memory is its own. :func:`phantom_collection` writes a data set
of any size from a few phantoms. ``tests/test_dataset_cache.py`` uses both; :func:`scale` (``python -m tools.bench
data_scale``) runs every 3D bundle over 8 and 160 volumes, :func:`pipeline` (``python -m tools.bench
data_pipeline``) measures ``tools.prepare`` and one loader worker by data source and cache, :func:`slices_scale`
does what :func:`scale` does for the 2D bundles, and :func:`feed`
(``python -m tools.bench data_feed``) sets each 3D bundle's loader against its training step at the paper's sizes.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader
from PIL import Image

from common.data import generate_phantom, pretraining_datalist, training_dataset
from common.transforms import prepare_ct, pretraining_train_transforms
from tools.measure import in_fresh_process, status_mb, timed_steps

REPO_ROOT = Path(__file__).resolve().parents[1]


def phantom_collection(folder: str | Path, volumes: int, distinct: int = 8, shape: tuple = (96, 96, 96),
                       spacing: tuple = (1.5, 1.5, 1.5)) -> Path:
    """``folder`` with ``volumes`` NIfTI files (int16 HU of ``shape`` at ``spacing``): ``distinct`` phantoms
    (:func:`common.data.generate_phantom`), copied over and over, each copy a file of its own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(volumes):
        path = folder / f"ct_{index:05d}.nii.gz"
        if index < distinct:
            image, _, affine = generate_phantom(index, shape, spacing)
            nib.save(nib.Nifti1Image(image, affine), path)
        else:
            shutil.copy(folder / f"ct_{index % distinct:05d}.nii.gz", path)
    return folder


def bundle_parser(bundle: str, settings: dict, smoke: bool = True) -> ConfigParser:
    """``bundles/<bundle>``'s ``train.json`` (with ``smoke.json`` where ``smoke``) updated with ``settings``, as
    ``monai.bundle run`` reads it."""
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_meta(str(configs / "metadata.json"))
    parser.read_config([str(configs / "train.json")] + ([str(configs / "smoke.json")] if smoke else []))
    parser.update(settings)
    return parser


def slice_collection(folder: str | Path, slices: int, distinct: int = 8, size: int = 512) -> Path:
    """``folder`` with ``slices`` 8-bit PNG slices of ``size`` x ``size``: the middle axial slices of ``distinct``
    phantoms (:func:`common.data.generate_phantom`, full HU range -1024..3071 to 0..255 as ``tools.extract_slices``
    writes them), copied over and over, each copy a file of its own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(slices):
        path = folder / f"slice_{index:06d}.png"
        if index < distinct:
            volume, _, _ = generate_phantom(index, (size, size, 3), (0.8, 0.8, 1.0))
            grey = (volume[:, :, 1].astype(np.float32) + 1024) / 4095 * 255
            Image.fromarray(grey.clip(0, 255).round().astype(np.uint8)).save(path)
        else:
            shutil.copy(folder / f"slice_{index % distinct:06d}.png", path)
    return folder


def loader_run(bundle: str, dataset_dir: str, batches: int, settings: dict) -> dict:
    """Build ``bundles/<bundle>``'s ``train#dataloader`` (``train.json`` + ``smoke.json`` + ``settings``, its data
    from ``dataset_dir``) and read ``batches`` batches.

    Returns:
        ``first_batch_s``: from building the data set (a RAM cache fills then) to the first batch;
        ``batches_per_s``: the rate of the batches after it; ``peak_mb``: this process's peak resident memory
        above its resident memory before the data set was built; ``dataset``: the MONAI data set's class.
    """
    parser = bundle_parser(bundle, {"dataset_dir": str(dataset_dir), **settings})
    base_mb = status_mb("VmRSS")
    start = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    stream = iter(loader)
    next(stream)
    first = time.perf_counter()
    for _ in range(batches - 1):
        next(stream)
    rest = time.perf_counter() - first
    return {
        "first_batch_s": first - start,
        "batches_per_s": (batches - 1) / rest if batches > 1 else float("nan"),
        "peak_mb": status_mb("VmHWM") - base_mb,
        "dataset": type(loader.dataset).__name__,
    }


VOLUME_BUNDLES = ("hyspark_pretrain", "spark3d_pretrain", "mim_pretrain", "glmae_pretrain", "mae3d_pretrain")
SLICE_BUNDLES = ("spark2d_pretrain", "moco2d_pretrain", "byol2d_pretrain", "swav2d_pretrain")


def few_against_many(bundles: tuple[str, ...], folders: list[Path], settings: dict) -> dict:
    """Each bundle's :func:`loader_run` (3 batches) on ``folders[0]`` and on ``folders[1]``, each in a fresh process:
    both results, and the peak memory and time to the first batch that the larger data set adds."""
    results = {}
    for bundle in bundles:
        few, many = (in_fresh_process(loader_run, bundle, str(folder), 3, settings) for folder in folders)
        results[bundle] = {"few": few, "many": many, "peak_mb_added": many["peak_mb"] - few["peak_mb"],
                           "first_batch_s_added": many["first_batch_s"] - few["first_batch_s"]}
    return results


def scale(root: str | Path, volumes: tuple[int, int] = (8, 160), shape: tuple = (160, 160, 160),
          bundles: tuple[str, ...] = VOLUME_BUNDLES) -> dict:
    """Each bundle's ``train#dataloader`` (default ``dataset_cache``, the smoke sizes at the phantoms' 1.5 mm) over
    ``volumes[0]`` and over ``volumes[1]`` volumes of ``shape`` (:func:`few_against_many`)."""
    root = Path(root)
    folders = [phantom_collection(root / f"ct_{count}", count, shape=shape) for count in volumes]
    return few_against_many(bundles, folders, {"pixdim": [1.5, 1.5, 1.5], "num_workers": 0,
                                               "output_dir": str(root / "eval")})


def slices_scale(root: str | Path, slices: tuple[int, int] = (8, 5000), size: int = 512,
                 bundles: tuple[str, ...] = SLICE_BUNDLES) -> dict:
    """:func:`scale` for the 2D bundles: each ``train#dataloader`` over ``slices[0]`` and ``slices[1]`` PNG slices of
    ``size``^2 (the default ``slices[1]`` lies above the 4096 slices that ``auto`` keeps in RAM)."""
    root = Path(root)
    folders = [slice_collection(root / f"slices_{count}", count, size=size) for count in slices]
    return few_against_many(bundles, folders, {"num_workers": 0, "output_dir": str(root / "eval")})


def batch_samples(batch: dict) -> int:
    """The training samples a collated batch holds: the first dimension of its tensors (crops, level-1 volumes or
    source volumes with their views, as the method's bundle defines a sample)."""
    return next(value for value in batch.values() if torch.is_tensor(value)).shape[0]


def sample_rate(dataset, batches: int) -> float:
    """Samples per second one loader worker gives: ``batches`` batches of ``dataset`` read in this process."""
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    start, samples = time.perf_counter(), 0
    for index, batch in enumerate(loader):
        samples += batch_samples(batch)
        if index + 1 == batches:
            break
    return samples / (time.perf_counter() - start)


def pipeline(root: str | Path, volumes: int = 4, shape: tuple = (512, 512, 300), spacing: tuple = (0.8, 0.8, 1.0),
             num_workers: int | None = None) -> dict:
    """HySparK's paper pipeline (96^3 crops, 4 per volume, 1.5 mm, abdomen window) on ``volumes`` synthetic CTs of
    ``shape`` at ``spacing``: ``tools.prepare``'s time and bytes per volume, and one loader worker's samples/s reading
    the sources afresh, the prepared volumes afresh, a RAM cache and a disk cache (its second pass)."""
    root = Path(root)
    sources = phantom_collection(root / "sources", volumes, distinct=1, shape=shape, spacing=spacing)
    start = time.perf_counter()
    prepared = prepare_ct([sources], root / "prepared", (1.5, 1.5, 1.5), num_workers)
    prepare_s = time.perf_counter() - start
    transform = pretraining_train_transforms((96, 96, 96), (1.5, 1.5, 1.5), num_samples=4, window="abdomen")
    raw = [{"image": str(path)} for path in sorted(sources.glob("*.nii.gz"))]
    ready = pretraining_datalist(prepared.dataset_dir)
    disk = training_dataset(raw, transform, "disk", cache_dir=root / "cache")
    sample_rate(disk, volumes)  # the first pass writes the cache
    return {
        "volumes": volumes,
        "shape": list(shape),
        "prepare_s_per_volume_per_worker": prepare_s * (num_workers or os.cpu_count() or 1) / volumes,
        "source_mb_per_volume": prepared.source_bytes / volumes / 1e6,
        "prepared_mb_per_volume": prepared.prepared_bytes / volumes / 1e6,
        "samples_per_s_per_worker": {
            "sources_afresh": sample_rate(training_dataset(raw, transform, "none"), volumes),
            "prepared_afresh": sample_rate(training_dataset(ready, transform, "none"), volumes),
            "ram_cache": sample_rate(training_dataset(raw, transform, "ram"), volumes),
            "disk_cache": sample_rate(disk, volumes),
        },
    }


def feed_run(bundle: str, dataset_dir: str, cache_dir: str, steps: int, warmup: int) -> dict:
    """``bundle`` at its paper sizes (``train.json`` with ``cpu_demo_scale`` false) on the CPU: one loader worker's
    samples/s from ``dataset_dir`` read afresh, from a disk cache (its second pass) and from a RAM cache, and the
    seconds of one training step (forward, backward, AdamW) on one sample of its batch.

    The step runs on one sample, not the paper's per-device batch, so that it fits the CPU's memory; its samples/s
    is the one sample over the step's time (on the CPU a step's time grows about linearly with its samples).
    """
    settings = {"dataset_dir": dataset_dir, "cpu_demo_scale": False, "device": "$torch.device('cpu')", "amp": False,
                "num_workers": 0}
    parser = bundle_parser(bundle, settings, smoke=False)
    datalist, transform = parser.get_parsed_content("datalist"), parser.get_parsed_content("train#preprocessing")
    count = len(datalist)
    disk = training_dataset(datalist, transform, "disk", cache_dir=cache_dir)
    sample_rate(disk, count)  # the first pass writes the cache
    loader = {
        "afresh": sample_rate(training_dataset(datalist, transform, "none"), count),
        "disk_cache": sample_rate(disk, count),
        "ram_cache": sample_rate(training_dataset(datalist, transform, "ram"), count),
    }
    torch.manual_seed(0)
    method, optimizer = parser.get_parsed_content("method"), parser.get_parsed_content("optimizer")
    batch = next(iter(DataLoader(training_dataset(datalist, transform, "none"), batch_size=1)))
    one = {key: value[:1] if torch.is_tensor(value) else value for key, value in batch.items()}

    def one_step() -> None:
        loss = method(one)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step = timed_steps(one_step, steps, warmup, torch.device("cpu"))
    step_rate = 1 / step["seconds_per_step"]
    return {
        "loader_samples_per_s_per_worker": loader,
        "step_s_per_sample": step["seconds_per_step"],
        "step_peak_mb": step["peak_mb"],
        "workers_needed": {kind: math.ceil(step_rate / rate) for kind, rate in loader.items()},
    }


def feed(root: str | Path, volumes: int = 2, shape: tuple = (512, 512, 300), spacing: tuple = (0.8, 0.8, 1.0),
         steps: int = 1, warmup: int = 1, bundles: tuple[str, ...] = VOLUME_BUNDLES) -> dict:
    """Each 3D bundle's loader against its training step at the paper's sizes (:func:`feed_run`, each bundle in a
    fresh process), on ``volumes`` synthetic CTs of ``shape`` at ``spacing`` prepared once by ``tools.prepare``."""
    root = Path(root)
    sources = phantom_collection(root / "sources", volumes, distinct=1, shape=shape, spacing=spacing)
    prepared = prepare_ct([sources], root / "prepared", (1.5, 1.5, 1.5))
    return {
        bundle: in_fresh_process(feed_run, bundle, str(prepared.dataset_dir), str(root / "cache" / bundle), steps,
                                 warmup)
        for bundle in bundles
    }
