"""Pre-training throughput of the 2D study's four methods on CT slices, and SparK's two sparse back-ends in 2D.

Each method is built at the paper's sizes (ResNet-50, its heads, MoCo's 65536-key queue, SwAV's 500 prototypes)
and trained for a few steps on random slices of ``size`` x ``size`` (SwAV: 2 global views of ``size`` and 6
local views of ``size * 96 / 224``), each measurement in a fresh process (:mod:`tools.measure`). The figure is
images per second: slices of the data set consumed per second, so a method that cuts two or eight views of
every slice pays for them. Every method steps AdamW, so the figures compare the methods' networks and losses,
not the optimisers (LAMB / LARS / SGD differ little in cost next to a ResNet-50).
"""

from __future__ import annotations

import torch

from tools.measure import in_fresh_process, timed_steps

METHODS = ("SparK2D", "MoCoV2", "BYOL", "SwAV")
SPARK_BACKENDS = ("masked", "spconv")


def _batch(method_name: str, batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random slices in the layout ``method_name``'s ``forward`` reads."""
    if method_name == "SparK2D":
        return {"image": torch.rand(batch, 1, size, size, device=device)}
    if method_name == "SwAV":
        local = size * 96 // 224
        return {
            "global_views": torch.rand(batch, 2, 1, size, size, device=device),
            "local_views": torch.rand(batch, 6, 1, local, local, device=device),
        }
    return {"views": torch.rand(batch, 2, 1, size, size, device=device)}


def _step(method_name: str, backend: str | None, size: int, batch: int, steps: int, warmup: int, device: str) -> dict:
    import common.methods

    torch.manual_seed(0)
    device = torch.device(device)
    options = {"sparse_backend": backend} if backend else {}
    method = getattr(common.methods, method_name)(**options).to(device).train()
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    data = _batch(method_name, batch, size, device)

    def one_step():
        loss = method(data)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if hasattr(method, "update_teacher"):
            method.update_teacher(0.99)

    result = timed_steps(one_step, steps, warmup, device)
    result["images_per_second"] = batch / result["seconds_per_step"]
    return result


def slices2d_costs(size: int = 224, batch: int = 8, steps: int = 2, warmup: int = 1, device: str | None = None) -> dict:
    """``{method: {seconds_per_step, peak_mb, images_per_second}}`` and ``SparK2D_spconv`` with the ratios.

    ``SparK2D`` runs the ``auto`` back-end (``masked`` on a CPU, ``spconv`` on CUDA); ``SparK2D_backends`` holds
    both back-ends side by side with ``spconv_speedup`` = masked / spconv time and ``spconv_memory_ratio`` =
    spconv / masked peak memory.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {name: in_fresh_process(_step, name, None, size, batch, steps, warmup, device) for name in METHODS}
    backends = {
        backend: in_fresh_process(_step, "SparK2D", backend, size, batch, steps, warmup, device) for backend in SPARK_BACKENDS
    }
    backends["spconv_speedup"] = backends["masked"]["seconds_per_step"] / backends["spconv"]["seconds_per_step"]
    backends["spconv_memory_ratio"] = backends["spconv"]["peak_mb"] / backends["masked"]["peak_mb"]
    results["SparK2D_backends"] = backends
    return results
