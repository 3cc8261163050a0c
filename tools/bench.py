"""Benchmarks (not tests): ratios measured side by side in one process, recorded in docs/benchmarks.md.

``python -m tools.bench infer``  the btcv_segmentation bundle's ``inference.json`` against a bare loop of
                                 MONAI's ``sliding_window_inference`` with the same weights and settings,
                                 on a 1 x 256 x 256 x 128 volume (the bundle should add no overhead).
``python -m tools.bench data``   training-pipeline iterations/s with ``CacheDataset`` against ``Dataset``
                                 on the demo data.
``python -m tools.bench data_scale``     each 3D pre-training bundle's loader over 8 and over 160 volumes of
                                 160^3, each 2D one's over 8 and 5000 slices of 512^2: peak memory and time to the
                                 first batch (:mod:`tools.bench_data`).
``python -m tools.bench data_pipeline``  ``tools.prepare`` on synthetic 512 x 512 x 300 CTs (time, bytes), and one
                                 loader worker's samples/s of HySparK's paper pipeline reading sources afresh,
                                 prepared volumes afresh, a RAM cache and a disk cache.
``python -m tools.bench data_feed``      each 3D pre-training bundle at its paper sizes: one loader worker's samples/s
                                 (prepared volumes afresh, disk cache, RAM cache) against the training step's,
                                 and the workers needed not to starve the step (:mod:`tools.bench_data`).
``python -m tools.bench sparse`` one pre-training step (forward + backward + AdamW) of HySparK and SparK-3D
                                 at 96^3, batch 2, mask 0.75: ``masked`` against ``spconv``, time and peak
                                 memory (:mod:`tools.bench_sparse`).
``python -m tools.bench mim``    MiM's ConvViT encoder on visible tokens only against all tokens (time, memory,
                                 GFLOPs), and one full MiM step of the ``official`` geometry (:mod:`tools.bench_mim`).
``python -m tools.bench glmae``  one GL-MAE step (paper sizes) split into teacher, student global / local,
                                 decoder, against the views' data pipeline in views/s (:mod:`tools.bench_glmae`).
``python -m tools.bench mae3d``  one MAE3D step encoding visible tokens only against all tokens.
``python -m tools.bench slices2d`` pre-training images/s of SparK 2D, MoCo v2, BYOL and SwAV (ResNet-50, 224),
                                 and SparK's ``masked`` against ``spconv`` back-end in 2D (:mod:`tools.bench_slices2d`).
``python -m tools.bench images`` one pre-training step of SparK-3D, HySparK and MiM (demo sizes) building the
                                 snapshot images at every step (as before) against only when a snapshot asks.
``python -m tools.bench checks`` reading a CT volume with the input checks (gzip CRC, non-finite and int16 range)
                                 against MONAI's plain ``LoadImaged``: what checking every input costs.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from monai.data import CacheDataset, DataLoader, Dataset
from monai.inferers import sliding_window_inference
from monai.transforms import LoadImaged

from tools.bench_data import feed as data_feed_runs
from tools.bench_data import pipeline as data_pipeline_runs
from tools.bench_data import scale as data_scale_runs
from tools.bench_data import slices_scale as data_slices_scale_runs
from tools.bench_glmae import glmae_costs, mae3d_costs
from tools.bench_mim import mim_costs
from tools.bench_slices2d import slices2d_costs
from common.transforms import checked_loader
from tools.bench_sparse import sparse_step
from tools.measure import batches_per_second

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "btcv_segmentation"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _workflow(config: str, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=str(BUNDLE / "configs" / config), workflow_type=None, **overrides)
    workflow.initialize()
    return workflow


def infer(shape: tuple[int, int, int] = (256, 256, 128), repeats: int = 1) -> dict:
    """Seconds per volume: bundle ``inference.json`` (read, preprocess, sliding window, invert, write) vs bare loop.

    The volume is written at the bundle's 1.5 mm spacing, so resampling is the identity and both paths run
    the same number of windows. The bare loop times ``sliding_window_inference`` + argmax on the tensor only.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        volume = rng.normal(40, 200, size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 1.5, 1.0])), tmp / "volume.nii.gz")

        workflow = _workflow("inference.json", input=str(tmp / "volume.nii.gz"), output_dir=str(tmp / "out"),
                             ckpt_path=str(tmp / "model.pt"))
        network, inferer, device = (workflow.parser.get_parsed_content(k) for k in ("network", "inferer", "device"))
        torch.save(network.state_dict(), tmp / "model.pt")
        image = torch.from_numpy(workflow.parser.get_parsed_content("preprocessing")({"image": str(tmp / "volume.nii.gz")})["image"].numpy())[None]

        def bare() -> None:
            with torch.no_grad(), torch.autocast(device.type, enabled=workflow.parser.get_parsed_content("flags#amp")):
                logits = sliding_window_inference(
                    image.to(device), inferer.roi_size, inferer.sw_batch_size, network.eval(), overlap=inferer.overlap
                )
                logits.argmax(1)

        def bundle() -> None:
            workflow.parser.get_parsed_content("evaluator").run()

        times = {"bundle": [], "bare": []}
        for _ in range(repeats):  # interleaved, so both see the same machine load
            for name, fn in (("bare", bare), ("bundle", bundle)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        result = {
            "device": _device_name(device),
            "volume": f"1x{shape[0]}x{shape[1]}x{shape[2]}",
            "roi_size": list(inferer.roi_size),
            "bare_s": min(times["bare"]),
            "bundle_s": min(times["bundle"]),
        }
        result["ratio"] = result["bundle_s"] / result["bare_s"]
        return result


def data(iterations: int = 12, num_workers: int = 0) -> dict:
    """Training-pipeline iterations/s (batch 1, the bundle's random crops) with CacheDataset vs Dataset."""
    workflow = _workflow("train.json", num_workers=num_workers)
    train_list = workflow.parser.get_parsed_content("split")[0]
    transform = workflow.parser.get_parsed_content("train#preprocessing")

    def rate(dataset) -> float:
        return batches_per_second(DataLoader(dataset, batch_size=1, shuffle=True, num_workers=num_workers), iterations)

    start = time.perf_counter()
    cached = CacheDataset(train_list, transform, cache_rate=1.0, num_workers=num_workers, progress=False)
    cache_s = time.perf_counter() - start
    result = {
        "device": _device_name(torch.device("cpu")),
        "cases": len(train_list),
        "cache_fill_s": cache_s,
        "cache_it_per_s": rate(cached),
        "plain_it_per_s": rate(Dataset(train_list, transform)),
    }
    result["speedup"] = result["cache_it_per_s"] / result["plain_it_per_s"]
    return result


def images(size: int = 64, batch: int = 2, repeats: int = 5) -> dict:
    """Seconds per pre-training step (forward, backward, AdamW) with ``images=True`` against without, per method.

    Before the images were built on demand, every step built them (SparK and HySparK for the whole batch, MiM for
    the first sample of each level); now only the steps a snapshot asks for do. Demo network sizes, ``batch`` crops
    of ``size``^3 per step (MiM: one level-1 crop of its ``cpu_demo`` geometry, as its demo), the best of
    ``repeats`` interleaved steps each.
    """
    from common.methods import MiM, HySparK, SparK3D
    from common.networks import convvit_config, hybrid_config

    torch.manual_seed(0)
    methods = {
        "SparK3D": SparK3D(decoder_width=64),
        "HySparK": HySparK(encoder=hybrid_config(cpu_demo_scale=True), decoder_width=64),
        "MiM": MiM(encoder=convvit_config(cpu_demo_scale=True), geometry="cpu_demo", decoder_width=96, decoder_depth=2,
                   decoder_heads=4, contrast_dim=256),
    }
    result = {"device": _device_name(torch.device("cpu"))}
    for name, method in methods.items():
        optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
        shape = (1, 1, *method.geometry.crops[0]) if name == "MiM" else (batch, 1, size, size, size)
        image = torch.rand(shape)
        times = {True: [], False: []}
        for _ in range(repeats):
            for with_images in (True, False):
                start = time.perf_counter()
                loss = method({"image": image}, images=with_images)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                times[with_images].append(time.perf_counter() - start)
        result[name] = {"crops": "x".join(map(str, shape)), "with_images_s": min(times[True]),
                        "without_s": min(times[False])}
        result[name]["speedup"] = result[name]["with_images_s"] / result[name]["without_s"]
    return result


def checks(shape: tuple[int, int, int] = (512, 512, 200), repeats: int = 3) -> dict:
    """Seconds to read one int16 CT volume (``.nii.gz``, HU-like noise): checked loader vs MONAI's ``LoadImaged``.

    ``common.transforms.checked_loader`` reads the gzip stream to its end (CRC-32 verified) and checks the values
    (non-finite, int16 range) in one pass; the plain loader is ``LoadImaged(ensure_channel_first=True)``. Timed
    interleaved, the best of ``repeats`` each.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        rng = np.random.default_rng(0)
        nib.save(nib.Nifti1Image(rng.normal(0, 300, size=shape).clip(-1024, 3071).astype(np.int16), np.eye(4)), path)
        loaders = {"plain": LoadImaged("image", ensure_channel_first=True), "checked": checked_loader(["image"])}
        times = {name: [] for name in loaders}
        for _ in range(repeats):
            for name, load in loaders.items():
                start = time.perf_counter()
                load({"image": str(path)})
                times[name].append(time.perf_counter() - start)
        result = {
            "device": _device_name(torch.device("cpu")),
            "volume": f"{shape[0]}x{shape[1]}x{shape[2]} int16, {path.stat().st_size / 2**20:.0f} MiB gzip",
            "plain_s": min(times["plain"]),
            "checked_s": min(times["checked"]),
        }
        result["ratio"] = result["checked_s"] / result["plain_s"]
        return result


def data_scale(volumes: tuple[int, int] = (8, 160), size: int = 160, slices: tuple[int, int] = (8, 5000)) -> dict:
    """Each 3D pre-training bundle's loader over ``volumes[0]`` and ``volumes[1]`` phantoms of ``size``^3, and each 2D
    one's over ``slices[0]`` and ``slices[1]`` PNG slices of 512^2."""
    with tempfile.TemporaryDirectory() as root:
        return {"device": _device_name(torch.device("cpu")), **data_scale_runs(root, tuple(volumes), (size,) * 3),
                **data_slices_scale_runs(root, tuple(slices))}


def data_pipeline(volumes: int = 4, num_workers: int | None = None) -> dict:
    """``tools.prepare`` and one loader worker's samples/s of HySparK's paper pipeline, by data source and cache."""
    with tempfile.TemporaryDirectory() as root:
        return {"device": _device_name(torch.device("cpu")), **data_pipeline_runs(root, volumes, num_workers=num_workers)}


def data_feed(volumes: int = 2, steps: int = 1, warmup: int = 1) -> dict:
    """Each 3D bundle's loader (one worker) against its training step at the paper's sizes, on the CPU."""
    with tempfile.TemporaryDirectory() as root:
        return {"device": _device_name(torch.device("cpu")), **data_feed_runs(root, volumes, steps=steps, warmup=warmup)}


def sparse(size: int = 96, batch: int = 2, steps: int = 1, warmup: int = 1, device: str | None = None) -> dict:
    """One HySparK / SparK-3D training step, ``masked`` vs ``spconv``: time, peak memory and their ratios."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {"device": _device_name(torch.device(device)), **sparse_step(size, batch, steps, warmup, device)}


def mim(size: int = 96, batch: int = 1, steps: int = 1, warmup: int = 1, device: str | None = None, full_step: bool = True) -> dict:
    """MiM encoder forward + backward, visible tokens only vs all tokens, and one full MiM step."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {"device": _device_name(torch.device(device)), **mim_costs(size, batch, steps, warmup, device, full_step)}


def glmae(batch: int = 1, steps: int = 1, warmup: int = 1, num_workers: int = 2, device: str | None = None) -> dict:
    """One GL-MAE step split into its parts, and the views' pipeline against the step's consumption."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {"device": _device_name(torch.device(device)), **glmae_costs(batch, steps, warmup, num_workers, device)}


def mae3d(batch: int = 2, steps: int = 1, warmup: int = 1, device: str | None = None) -> dict:
    """One MAE3D step, visible tokens only vs all tokens: time, peak memory and their ratios."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {"device": _device_name(torch.device(device)), **mae3d_costs(batch, steps, warmup, device)}


def slices2d(size: int = 224, batch: int = 8, steps: int = 2, warmup: int = 1, device: str | None = None) -> dict:
    """Pre-training images/s of the four 2D methods, and SparK 2D ``masked`` vs ``spconv``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {"device": _device_name(torch.device(device)), **slices2d_costs(size, batch, steps, warmup, device)}


if __name__ == "__main__":
    fire.Fire(
        {
            "infer": infer,
            "data": data,
            "data_scale": data_scale,
            "data_pipeline": data_pipeline,
            "data_feed": data_feed,
            "sparse": sparse,
            "mim": mim,
            "glmae": glmae,
            "mae3d": mae3d,
            "slices2d": slices2d,
            "images": images,
            "checks": checks,
        }
    )
