"""GL-MAE's and MAE3D's costs (benchmarks, not tests).

* :func:`glmae_costs`: one GL-MAE step split into its parts, each timed on its own with the paper's sizes
  (ViT-B/16, 2 global views of 160^3 and 8 local views of 96^3 per volume, mask 0.6): the teacher forward on
  the complete global views, the student encoder forward + backward on the masked global and on the masked
  local views, the MAE decoder forward + backward on both, and the whole step (forward, backward, AdamW, EMA).
  Against it, the views' data pipeline (:func:`~common.transforms.global_local_train_transforms` after
  caching, ``num_workers`` DataLoader workers) on CT-sized volumes: views per second produced against views
  per second the step consumes. ``pipeline_margin`` > 1 means the pipeline keeps up.
* :func:`mae3d_costs`: one MAE3D step (ViT-B/16 + decoder, 96^3, mask 0.75) encoding the visible tokens only
  against encoding all tokens (masked voxels zeroed, SimMIM-style), each in a fresh process
  (:mod:`tools.measure`): time and peak memory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from tools.measure import batches_per_second, in_fresh_process, timed_steps

PAPER = {"global_size": 160, "local_size": 96, "global_views": 2, "local_views": 8}


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    return timed_steps(fn, steps, warmup, device)["seconds_per_step"]


def _glmae_parts(batch: int, steps: int, warmup: int, device: str) -> dict:
    from common.methods import GLMAE
    from common.methods.mae import scatter_visible

    torch.manual_seed(0)
    device = torch.device(device)
    method = GLMAE().to(device)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    views = {
        "global": torch.rand(batch * PAPER["global_views"], 1, *(PAPER["global_size"],) * 3, device=device),
        "local": torch.rand(batch * PAPER["local_views"], 1, *(PAPER["local_size"],) * 3, device=device),
    }
    masks = {kind: method.mask(image, torch.Generator().manual_seed(0)) for kind, image in views.items()}
    seconds = {"teacher_forward": _timed(lambda: method.anchors(views["global"]), steps, warmup, device)}
    for kind, image in views.items():
        visible = masks[kind]

        def student() -> None:
            method.zero_grad(set_to_none=True)
            method.head(method.encoder(image, visible)[:, 0]).sum().backward()

        with torch.no_grad():
            latent = scatter_visible(method.encoder(image, visible)[:, 1:], visible)

        def decoder() -> None:
            method.zero_grad(set_to_none=True)
            method.decoder(latent, visible)[0].square().mean().backward()

        seconds[f"student_{kind}"] = _timed(student, steps, warmup, device)
        seconds[f"decoder_{kind}"] = _timed(decoder, steps, warmup, device)
    batch_views = {"global_views": views["global"].view(batch, -1, *views["global"].shape[1:]),
                   "local_views": views["local"].view(batch, -1, *views["local"].shape[1:])}

    def step() -> None:
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = method(batch_views)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.update_teacher(0.996)

    measured = timed_steps(step, steps, warmup, device)
    return {"seconds": seconds, "step_s": measured["seconds_per_step"], "step_peak_mb": measured["peak_mb"]}


def _write_volumes(folder: Path, count: int, shape: tuple[int, int, int]) -> list[dict]:
    rng = np.random.default_rng(0)
    entries = []
    for index in range(count):
        path = folder / f"ct_{index}.nii"
        volume = rng.normal(0, 300, size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 1.5, 1.0])), path)
        entries.append({"image": str(path)})
    return entries


def pipeline_views_per_second(
    num_workers: int, batches: int = 8, volumes: int = 4, shape: tuple[int, int, int] = (320, 320, 240), **sizes
) -> float:
    """Views per second of the cached GL-MAE pipeline (batch 1) on ``volumes`` CT-sized volumes at 1.5 mm."""
    from monai.data import CacheDataset, DataLoader

    from common.transforms import global_local_train_transforms

    sizes = PAPER | sizes
    with tempfile.TemporaryDirectory() as tmp:
        datalist = _write_volumes(Path(tmp), volumes, shape)
        dataset = CacheDataset(datalist, global_local_train_transforms(**sizes), cache_rate=1.0, progress=False)
        loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=num_workers)
        return batches_per_second(loader, batches) * (sizes["global_views"] + sizes["local_views"])


def glmae_costs(batch: int = 1, steps: int = 1, warmup: int = 1, num_workers: int = 2, device: str = "cpu") -> dict:
    """``{"seconds": {part: s}, "step_s", "step_peak_mb", "model_views_per_s", "pipeline_views_per_s",
    "pipeline_margin"}`` of one GL-MAE step with ``batch`` volumes (paper sizes)."""
    result = in_fresh_process(_glmae_parts, batch, steps, warmup, device)
    result["model_views_per_s"] = batch * (PAPER["global_views"] + PAPER["local_views"]) / result["step_s"]
    result["pipeline_views_per_s"] = pipeline_views_per_second(num_workers)
    result["pipeline_margin"] = result["pipeline_views_per_s"] / result["model_views_per_s"]
    result["num_workers"] = num_workers
    return result


def _mae3d_step(batch: int, visible_only: bool, steps: int, warmup: int, device: str) -> dict:
    from common.losses import unpatchify
    from common.masking import upsample_mask
    from common.methods import MAE3D
    from common.methods.mae import scatter_visible

    torch.manual_seed(0)
    device = torch.device(device)
    method = MAE3D().to(device)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    image = torch.rand(batch, 1, 96, 96, 96, device=device)
    visible = method.mask(image, torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            if visible_only:
                latent = scatter_visible(method.encoder(image, visible)[:, 1:], visible)
            else:
                tokens = method.encoder(image * upsample_mask(visible, image.shape[2:]))[:, 1:]
                latent = tokens.transpose(1, 2).reshape(batch, -1, *visible.shape[2:])
            prediction = unpatchify(method.decoder(latent, visible)[0], method.patch_size, image)
            loss = method.reconstruction_loss(prediction, image, visible)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_steps(step, steps, warmup, device)


def mae3d_costs(batch: int = 2, steps: int = 1, warmup: int = 1, device: str = "cpu") -> dict:
    """``{"visible_only", "all_tokens", "speedup", "memory_ratio"}`` of one MAE3D step (paper sizes):
    ``speedup`` = all-token time / visible-only time, ``memory_ratio`` = visible-only / all-token peak memory."""
    result = {
        name: in_fresh_process(_mae3d_step, batch, visible_only, steps, warmup, device)
        for name, visible_only in (("visible_only", True), ("all_tokens", False))
    }
    visible, dense = result["visible_only"], result["all_tokens"]
    result["speedup"] = dense["seconds_per_step"] / visible["seconds_per_step"]
    result["memory_ratio"] = visible["peak_mb"] / dense["peak_mb"] if dense["peak_mb"] > 0 else float("nan")
    return result
