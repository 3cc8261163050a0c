"""Reductions over the processes of a ``torch.distributed`` run, a no-op in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduced(tensor: torch.Tensor, op: str = "SUM") -> torch.Tensor:
    """``tensor`` reduced in place (``op``: a ``torch.distributed.ReduceOp`` name) over the processes of the default
    group when one is initialised (DDP), else ``tensor`` itself."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor
