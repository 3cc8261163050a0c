"""One pre-training step of HySparK and SparK-3D with the ``masked`` (dense + re-masking, as the official
code) and the ``spconv`` (true sparsity) back-ends: time and peak memory, measured side by side.

Each measurement runs in a fresh process (``spawn``), so peak memory is that process's own: CUDA's
``max_memory_allocated`` above the memory held before the measured steps on a GPU; on the CPU the growth
of the peak resident set over the process's state after building the method (AdamW's state included).
"""

from __future__ import annotations

import multiprocessing
import resource
import time

import torch

METHODS = ("HySparK", "SparK3D")
BACKENDS = ("masked", "spconv")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _step(method_name: str, backend: str, size: int, batch: int, steps: int, warmup: int, device: str) -> dict:
    import common.methods

    torch.manual_seed(0)
    device = torch.device(device)
    method = getattr(common.methods, method_name)(mask_ratio=0.75, sparse_backend=backend).to(device)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    image = torch.rand(batch, 1, size, size, size, device=device)

    def one_step():
        loss = method({"image": image})["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # ru_maxrss never decreases, so on the CPU the baseline is taken before the warm-up steps.
    base_mb = None if device.type == "cuda" else _peak_rss_mb()
    for _ in range(warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mb = torch.cuda.memory_allocated() / 2**20
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = _peak_rss_mb()
    return {"seconds_per_step": (time.perf_counter() - start) / steps, "peak_mb": peak_mb - base_mb}


def _in_fresh_process(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_step, args)


def sparse_step(size: int = 96, batch: int = 2, steps: int = 1, warmup: int = 1, device: str | None = None) -> dict:
    """``{method: {backend: {seconds_per_step, peak_mb}, "spconv_speedup", "spconv_memory_ratio"}}``.

    ``spconv_speedup`` = masked time / spconv time; ``spconv_memory_ratio`` = spconv / masked peak memory
    of the step (the issue's goal on a GPU: >= 1.5 and <= 0.6).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {}
    for name in METHODS:
        runs = {backend: _in_fresh_process(name, backend, size, batch, steps, warmup, device) for backend in BACKENDS}
        runs["spconv_speedup"] = runs["masked"]["seconds_per_step"] / runs["spconv"]["seconds_per_step"]
        runs["spconv_memory_ratio"] = runs["spconv"]["peak_mb"] / runs["masked"]["peak_mb"]
        results[name] = runs
    return results
