"""Timing and peak memory of a repeated step, each measurement in a fresh process (shared by the benchmarks).

Peak memory is the measured process's own: CUDA's ``max_memory_allocated`` above the memory held after the
warm-up steps on a GPU; on the CPU the peak resident set (Linux ``VmHWM``) above the resident set before the
warm-up steps. (``getrusage``'s ``ru_maxrss`` is not used: Linux carries the parent's peak into a child
started by fork + exec, so a child of a large parent reports the parent's peak.)
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable

import torch


def status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``: resident now, ``VmHWM``: peak resident) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed_steps(one_step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> dict:
    """``{"seconds_per_step", "peak_mb"}`` of ``steps`` calls of ``one_step`` after ``warmup`` calls."""
    base_mb = None if device.type == "cuda" else status_mb("VmRSS")
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
        peak_mb = status_mb("VmHWM")
    return {"seconds_per_step": (time.perf_counter() - start) / steps, "peak_mb": peak_mb - base_mb}


def batches_per_second(loader: Iterable, batches: int) -> float:
    """Batches per second over the first ``batches`` batches of ``loader``, going through it again as needed."""
    done, start = 0, time.perf_counter()
    while done < batches:
        for _ in loader:
            done += 1
            if done == batches:
                break
    return batches / (time.perf_counter() - start)


def in_fresh_process(function: Callable[..., dict], *args) -> dict:
    """``function(*args)`` in a new ``spawn`` process (its own peak memory); ``function`` must be importable."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)
