"""One pre-training step of HySparK and SparK-3D with the ``masked`` (dense + re-masking, as the official
code) and the ``spconv`` (true sparsity) back-ends: time and peak memory, measured side by side, each in a
fresh process (:mod:`tools.measure`).
"""

from __future__ import annotations

import torch

from tools.measure import in_fresh_process, timed_steps

METHODS = ("HySparK", "SparK3D")
BACKENDS = ("masked", "spconv")


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

    return timed_steps(one_step, steps, warmup, device)


def sparse_step(size: int = 96, batch: int = 2, steps: int = 1, warmup: int = 1, device: str | None = None) -> dict:
    """``{method: {backend: {seconds_per_step, peak_mb}, "spconv_speedup", "spconv_memory_ratio"}}``.

    ``spconv_speedup`` = masked time / spconv time; ``spconv_memory_ratio`` = spconv / masked peak memory
    of the step (the issue's goal on a GPU: >= 1.5 and <= 0.6).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {}
    for name in METHODS:
        runs = {backend: in_fresh_process(_step, name, backend, size, batch, steps, warmup, device) for backend in BACKENDS}
        runs["spconv_speedup"] = runs["masked"]["seconds_per_step"] / runs["spconv"]["seconds_per_step"]
        runs["spconv_memory_ratio"] = runs["spconv"]["peak_mb"] / runs["masked"]["peak_mb"]
        results[name] = runs
    return results
