"""The MLP heads of the contrastive methods: ``Linear - [BatchNorm1d] - ReLU - Linear`` on pooled features."""

from __future__ import annotations

from torch import nn


def projection_mlp(in_features: int, hidden_features: int, out_features: int, batch_norm: bool = True) -> nn.Sequential:
    """A two-layer MLP ``(B, in_features)`` -> ``(B, out_features)``.

    With ``batch_norm``: BYOL's projector and predictor (Grill et al., Sec. 3.3: 4096 hidden, 256 out) and SwAV's
    projection head (Caron et al., official ``projection_head``: 2048 hidden, 128 out). Without: MoCo v2's head
    (Chen et al. 2020: 2048 hidden, 128 out), which replaced MoCo v1's single ``fc``.
    """
    norm = [nn.BatchNorm1d(hidden_features)] if batch_norm else []
    return nn.Sequential(
        nn.Linear(in_features, hidden_features), *norm, nn.ReLU(inplace=True), nn.Linear(hidden_features, out_features)
    )
