"""Over-fit HySparK on one fixed batch of a real CT scan: the loss must fall, and the reconstruction is
written as a PNG a person can look at.

``python -m tools.overfit ../shared/data/totalsegmentator/example_ct.nii.gz --png docs/images/hyspark_abdomen.png``

The batch (``num_samples`` random crops of the scan after the bundle's pre-processing) and the mask are
drawn once with ``seed`` and kept for every step, so a falling loss shows the method can learn, not that
the batches got easier. The network is the CPU demo size of ``hyspark_pretrain`` unless ``paper_size``.
"""

from __future__ import annotations

import time

import fire
import torch
from monai.utils import set_determinism

from common.data import inference_datalist
from common.methods import HySparK
from common.networks import hybrid_config
from common.previews import orthogonal_slices_png
from common.transforms import pretraining_train_transforms


def overfit(
    image: str,
    steps: int = 36,
    roi_size: int = 64,
    num_samples: int = 2,
    learning_rate: float = 1e-3,
    window: str = "abdomen",
    decoder_width: int = 96,
    paper_size: bool = False,
    sparse_backend: str = "auto",
    seed: int = 0,
    png: str | None = None,
) -> dict:
    """Train ``steps`` AdamW steps on one fixed masked batch of ``image``.

    Args:
        image: a NIfTI file or a DICOM series folder (the largest series is used).
        steps: optimisation steps.
        roi_size: crop side in voxels (multiple of 16).
        num_samples: crops in the batch.
        learning_rate: AdamW learning rate (no schedule).
        window: CT window preset (``abdomen`` -175..250 HU as HySparK; ``wide`` for a head scan).
        decoder_width: width of the light decoder's first block.
        paper_size: the paper's encoder instead of the CPU demo one.
        sparse_backend: ``auto``, ``masked`` or ``spconv``.
        seed: crops, mask and initialisation.
        png: where to write the reconstruction of the first crop after the last step.

    Returns:
        ``{"losses": [...], "first", "last", "seconds"}``.
    """
    set_determinism(seed)
    entries = inference_datalist(image)
    entry = max(entries, key=lambda e: len(e["image"]) if isinstance(e["image"], list) else 0)
    crops = pretraining_train_transforms((roi_size,) * 3, num_samples=num_samples, flip_probs=(0, 0, 0), window=window)(entry)
    batch = torch.stack([crop["image"].as_tensor() for crop in crops])
    method = HySparK(encoder=hybrid_config(cpu_demo_scale=not paper_size), decoder_width=decoder_width, sparse_backend=sparse_backend)
    visible = method.mask(batch, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(method.parameters(), lr=learning_rate)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        prediction = method.reconstruct(batch, visible)
        loss = method.loss(prediction, batch, visible)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    if png:
        images = method.images(batch[:1], prediction[:1].detach(), visible[:1])
        orthogonal_slices_png({name: value[0] for name, value in images.items()}, png, upscale=3)
    return {"losses": losses, "first": losses[0], "last": losses[-1], "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    fire.Fire(overfit)
