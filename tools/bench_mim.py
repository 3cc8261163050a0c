"""MiM's cost: the ConvViT encoder with visible-token-only processing against the same backbone on all tokens,
and one full MiM step, each measured in a fresh process (:mod:`tools.measure`).

* ``encoder``: forward + backward of :class:`~common.networks.ConvViT3D` (the paper's sizes) on ``batch``
  volumes of ``size``^3, mask ratio 0.6 (86 of 216 tokens at 96^3) against no mask: seconds, peak memory and
  forward GFLOPs (``torch.utils.flop_counter``: convolutions and matrix products). Backward FLOPs are not
  counted: torch 2.13's counter ignores ``groups`` in the convolution backward, so it counts a depth-wise
  convolution's backward as 17x its forward instead of 2x; training is taken as 3x the forward.
* ``mim_step``: one full MiM step of the ``official`` geometry (one 192^3 crop: 1 + 4 + 16 = 21 encoder and
  decoder passes at 96^3) so that users can plan: its GFLOPs (21 x 3 x the forward GFLOPs of the visible-only
  encoder plus the MAE decoder for one volume), and its time and peak memory measured with the paper's sizes on a GPU, or with the
  CPU demo sizes (``cpu_demo`` geometry, :func:`~common.networks.convvit_config`) on a CPU, where the paper's
  sizes do not fit: one 96^3 volume's encoder alone needs about 9 GB there in float32.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from tools.measure import in_fresh_process, timed_steps

MASK_RATIO = 0.6
OFFICIAL_PASSES = 1 + 4 + 16  # volumes of levels 1, 2 and 3 per level-1 crop, gamma = 4


def _encoder_inputs(size: int, batch: int, masked: bool, device: torch.device):
    from common.masking import random_patch_mask

    image = torch.rand(batch, 1, size, size, size, device=device)
    grid = (size // 16,) * 3
    visible = random_patch_mask(batch, grid, MASK_RATIO, torch.Generator().manual_seed(0), device) if masked else None
    return image, visible


def _encoder_gflops(size: int, batch: int, masked: bool) -> dict:
    from common.networks import ConvViT3D

    encoder = ConvViT3D()
    image, visible = _encoder_inputs(size, batch, masked, torch.device("cpu"))
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        encoder(image, visible)
    return forward.get_total_flops() / 1e9


def _encoder_step(size: int, batch: int, masked: bool, steps: int, warmup: int, device: str) -> dict:
    from common.networks import ConvViT3D

    torch.manual_seed(0)
    device = torch.device(device)
    encoder = ConvViT3D().to(device)
    image, visible = _encoder_inputs(size, batch, masked, device)

    def one_step():
        encoder.zero_grad(set_to_none=True)
        encoder(image, visible)[-1].square().mean().backward()

    return timed_steps(one_step, steps, warmup, device)


def _decoder_gflops(size: int) -> float:
    """Forward GFLOPs of MiM's MAE decoder (paper sizes) for one volume of ``size``^3."""
    from common.networks.mae_decoder import MAEDecoder

    decoder = MAEDecoder(384)
    grid = (size // 16,) * 3
    latent = torch.rand(1, 384, *grid)
    visible = torch.ones(1, 1, *grid, dtype=torch.bool)
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        decoder(latent, visible)
    return forward.get_total_flops() / 1e9


def _mim_step(steps: int, warmup: int, device: str) -> dict:
    from common.methods import MiM
    from common.networks import convvit_config

    torch.manual_seed(0)
    device = torch.device(device)
    if device.type == "cuda":
        method = MiM(geometry="official")
    else:
        small = {"decoder_width": 96, "decoder_depth": 2, "decoder_heads": 4, "contrast_dim": 256}
        method = MiM(encoder=convvit_config(True), geometry="cpu_demo", **small)
    method = method.to(device)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    image = torch.rand(1, 1, *method.geometry.crops[0], device=device)

    def one_step():
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = method({"image": image})["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    passes = sum(method.children_per_parent**level for level in range(method.geometry.num_levels))
    sizes = "paper sizes, official geometry" if device.type == "cuda" else "CPU demo sizes, cpu_demo geometry"
    return {"network": sizes, "encoder_passes": passes, **timed_steps(one_step, steps, warmup, device)}


def mim_costs(
    size: int = 96, batch: int = 1, steps: int = 1, warmup: int = 1, device: str | None = None, full_step: bool = True
) -> dict:
    """``{"encoder": {"visible_only", "all_tokens", "speedup", "memory_ratio", "flops_ratio"}, "mim_step"}``.

    ``speedup`` = all-token time / visible-only time; ``memory_ratio`` and ``flops_ratio`` = visible-only /
    all-token peak memory and forward GFLOPs. ``mim_step``: ``volume_forward_gflops`` (visible-only encoder +
    decoder, one volume: the figure of the paper's Table XI), ``official_train_gflops`` (21 volumes, 3x forward)
    and the measured step.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = {}
    for name, masked in (("visible_only", True), ("all_tokens", False)):
        encoder[name] = {
            **in_fresh_process(_encoder_step, size, batch, masked, steps, warmup, device),
            "forward_gflops": _encoder_gflops(size, batch, masked),
        }
    visible, dense = encoder["visible_only"], encoder["all_tokens"]
    encoder["speedup"] = dense["seconds_per_step"] / visible["seconds_per_step"]
    encoder["memory_ratio"] = visible["peak_mb"] / dense["peak_mb"] if dense["peak_mb"] > 0 else float("nan")
    encoder["flops_ratio"] = visible["forward_gflops"] / dense["forward_gflops"]
    result = {"size": size, "batch": batch, "mask_ratio": MASK_RATIO, "encoder": encoder}
    if full_step:
        volume = visible["forward_gflops"] / batch + _decoder_gflops(size)
        result["mim_step"] = {
            "volume_forward_gflops": volume,
            "official_train_gflops": OFFICIAL_PASSES * 3 * volume,
            **in_fresh_process(_mim_step, steps, warmup, device),
        }
    return result
