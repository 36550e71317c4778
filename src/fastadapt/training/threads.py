"""How many CPU threads a run uses, chosen per workload.

PyTorch opens an OpenMP parallel region for every operation and, by default, uses every core. For a
small network (the sinusoid MLP: 40x40 matrices) each operation is far too small to split, so the
threads only synchronise; and when another process keeps a core busy, the threads waiting for it spin:
the demo took 20 minutes on 2 cores beside one other training job, 76 seconds on one thread. So small
networks run on one thread, and larger ones on the cores that are idle (by the load average) at start.
The count is recorded in checkpoints and a resumed run keeps it; two fresh runs of a convolutional
network with the same seed give the same numbers when they run on the same number of threads
(``--threads N`` pins it).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from fastadapt.training.config import Config

#: Models whose operations are too small to gain from more than one thread.
SMALL_MODELS = frozenset({"mlp"})


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def busy_cores() -> int:
    """Cores other processes keep busy, from the 1-minute load average (0 where it is unknown)."""
    try:
        return int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):
        return 0


def choose_threads(cfg: Config, model_name: str, started_with: int | None = None) -> tuple[int, str]:
    """(threads, why) for a run of ``cfg`` whose network is ``model_name`` ('mlp', 'conv4', ...).

    ``started_with`` is the thread count a resumed run's checkpoint records: the same count again, because
    a convolution's sums are split by thread, so another count changes the weights in their last bits.
    """
    if cfg.training.threads is not None:
        return cfg.training.threads, "as --threads asked"
    if started_with is not None:
        return started_with, "as the run was started, so it continues exactly; --threads N to change"
    if model_name in SMALL_MODELS:
        return 1, f"a small {model_name} network: more threads would only wait on each other; --threads N to change"
    cores, busy = available_cores(), busy_cores()
    threads = max(1, cores - busy)
    if threads < cores:
        return threads, f"{cores} cores, about {min(busy, cores)} busy with other work; --threads N to change"
    return threads, f"all {cores} cores; --threads N to change"


@contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
