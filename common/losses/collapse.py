"""Collapse checks of the embedding methods: statistics logged next to the losses, with no gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Collapse check of the contrastive methods: per-dimension standard deviation over the batch of the
    L2-normalised embeddings, averaged over the dimensions (SimSiam, Chen & He, CVPR 2021, Sec. 4.1).

    ``(B, D)`` -> a scalar: 0 when every sample maps to the same vector (collapse), about ``1 / sqrt(D)`` when the
    embeddings spread over the unit sphere (e.g. 0.088 for ``D = 128``, 0.0625 for ``D = 256``). No gradient.
    """
    with torch.no_grad():
        return F.normalize(embeddings.detach().float(), dim=-1).std(dim=0).mean()
