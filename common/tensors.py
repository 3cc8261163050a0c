"""Tensor conversions that every layer of ``common`` may use (it imports nothing of ``common``)."""

from __future__ import annotations

import torch
from monai.data import MetaTensor


def as_plain_tensor(value: torch.Tensor) -> torch.Tensor:
    """``value`` without MONAI's meta data (a no-op for plain tensors)."""
    return value.as_tensor() if isinstance(value, MetaTensor) else value
