"""How many CPU threads torch uses, chosen per network, for the command line and the Python API alike.

PyTorch opens an OpenMP parallel region for every operation and, by default, uses every core. For a
small network (the sinusoid MLP: 40x40 matrices; the RL policies) each operation is far too small to
split, so the threads only synchronise; and when another process keeps a core busy, the threads waiting
for it spin, many times slower than one thread (measurements: docs/benchmarks.md, "Threads for a small
network").

``threads_for`` is the one rule. ``fastadapt train`` applies it for the whole run
(``fastadapt.training.threads.choose_threads``, which adds ``--threads`` and resume). In Python, building
one of fastadapt's networks applies it too (``network_built``), unless the thread count was chosen by
someone else: ``torch.set_num_threads`` called after importing fastadapt, ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS``, or a ``using_threads`` block. There a small network sets one thread and a larger one
(Conv-4, DARTS) puts back torch's default rather than the idle cores the command line counts, so that a
script's numbers do not depend on the load of the moment.

Building a network also keeps freed memory for reuse (``fastadapt.allocator``), as ``fastadapt train`` does,
so that a script's training steps cost what the command line's do.

This module sits below every other (it imports only torch and the allocator setting), so networks may call it.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from fastadapt.allocator import reuse_freed_memory

#: Networks whose operations are too small to gain from more than one thread ("gru": RL²'s policy).
SMALL_MODELS = frozenset({"mlp", "gru"})
#: torch's own thread count, as it stood when fastadapt was first imported.
TORCH_DEFAULT = torch.get_num_threads()
_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_state = {"blocks": 0, "applied": None, "said": None, "quiet": False}


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


def threads_for(model_name: str, cores: int, busy: int) -> tuple[int, str]:
    """(threads, why) for a network named ``model_name`` ('mlp', 'conv4', ...) on ``cores`` cores of which
    ``busy`` are kept busy by other processes: one thread for a small network, the idle cores otherwise."""
    if model_name in SMALL_MODELS:
        return 1, f"a small {model_name} network: more threads would only wait on each other"
    threads = max(1, cores - busy)
    if threads < cores:
        return threads, f"{cores} cores, about {min(busy, cores)} busy with other work"
    return threads, f"all {cores} cores"


def chosen_elsewhere() -> bool:
    """Whether someone other than fastadapt's networks chose the thread count (see the module docstring)."""
    if _state["blocks"] or any(os.environ.get(name) for name in _ENVIRONMENT):
        return True
    return torch.get_num_threads() not in (TORCH_DEFAULT, _state["applied"])


def network_built(model_name: str) -> None:
    """The Python API's choice, called by fastadapt's networks when they are built: one thread for a small
    network, torch's default for another, unless the count was chosen elsewhere. Says so once on stderr.
    Freed memory is kept for reuse either way (the process then keeps its peak memory)."""
    reuse_freed_memory()
    if chosen_elsewhere():
        return
    if model_name in SMALL_MODELS:
        threads, why = threads_for(model_name, available_cores(), 0)
    else:
        threads, why = TORCH_DEFAULT, f"torch's default for a {model_name} network"
    _state["applied"] = threads
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        if _state["said"] != threads and not _state["quiet"]:
            _state["said"] = threads
            print(f"fastadapt: torch set to {threads} thread{'s' * (threads > 1)} ({why}; call "
                  "torch.set_num_threads(N) after importing fastadapt to choose yourself)", file=sys.stderr)


def quietly() -> None:
    """Stop ``network_built`` from saying what it chose (the command line says it its own way)."""
    _state["quiet"] = True


@contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the previous number. Networks built in
    the block leave the count alone."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    _state["blocks"] += 1
    try:
        yield
    finally:
        _state["blocks"] -= 1
        torch.set_num_threads(previous)
