"""The global batch of a recipe on any number of processes: the gradient accumulation that keeps it.

A recipe fixes ``global_batch_size``: the training samples that enter the model per optimizer step over all
processes. What a sample is belongs to the method (one crop for HySparK, SparK-3D and MAE3D, one level-1 volume for
MiM, one source volume with the global and local views cut from it for GL-MAE, one image for the 2D methods), and

    global_batch_size = batch_size x samples_per_item x accumulation_steps x world_size,

``batch_size`` being the items one process's data loader collates (volumes read, or images) and
``samples_per_item`` the samples each item gives (``num_samples`` crops of a volume; 1 elsewhere). Every process
accumulates the same number of iterations and ``DistributedDataParallel`` averages their gradients, so each
optimizer step averages the gradient over the whole global batch.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def world_size() -> int:
    """Processes taking part in training: the initialised process group's size, else torchrun's ``WORLD_SIZE``
    (so it is right before the group is initialised), else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def accumulation_steps(global_batch_size: int, batch_size: int, samples_per_item: int = 1,
                       processes: int | None = None) -> int:
    """The iterations each process accumulates per optimizer step so that every step takes ``global_batch_size``
    samples.

    Args:
        global_batch_size: samples per optimizer step over all processes (the recipe's batch).
        batch_size: items per iteration of one process's data loader.
        samples_per_item: samples each item gives (crops per volume).
        processes: the world size; default :func:`world_size`.

    Returns:
        ``global_batch_size / (batch_size * samples_per_item * processes)``, a positive integer.

    Raises:
        ValueError: a non-positive argument, or a world size that cannot keep the global batch; the message names
            the per-process batch sizes that can.
    """
    processes = world_size() if processes is None else processes
    sizes = {"global_batch_size": global_batch_size, "batch_size": batch_size, "samples_per_item": samples_per_item,
             "world size": processes}
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    per_iteration = batch_size * samples_per_item * processes
    if global_batch_size % per_iteration:
        per_process, remainder = divmod(global_batch_size, samples_per_item * processes)
        fitting = [size for size in range(1, per_process + 1) if per_process % size == 0] if not remainder else []
        hint = (f"choose --batch_size among {fitting}" if fitting else
                f"no --batch_size can: {global_batch_size} is not a multiple of {samples_per_item} sample(s) per item "
                f"x {processes} process(es); change the number of processes or --global_batch_size")
        raise ValueError(
            f"global_batch_size {global_batch_size} cannot be kept on {processes} process(es) with batch_size "
            f"{batch_size} x {samples_per_item} sample(s) per item: {global_batch_size} is not a multiple of "
            f"{per_iteration}; {hint}. Changing --global_batch_size changes the recipe: set --learning_rate for it "
            "too (see the bundle's README)."
        )
    return global_batch_size // per_iteration
