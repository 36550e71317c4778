"""How many CPU threads a run uses: the rule of ``fastadapt.threads`` (one thread for a small network, the
idle cores by the load average for a larger one), unless ``--threads N`` pins it or a resumed run continues.

The count is recorded in checkpoints and a resumed run keeps it; two fresh runs of a convolutional
network with the same seed give the same numbers when they run on the same number of threads.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fastadapt.threads import available_cores, busy_cores, threads_for, using_threads

if TYPE_CHECKING:
    from fastadapt.config.schema import Config

__all__ = ["available_cores", "busy_cores", "choose_threads", "using_threads"]


def choose_threads(cfg: Config, model_name: str, started_with: int | None = None) -> tuple[int, str]:
    """(threads, why) for a run of ``cfg`` whose network is ``model_name`` ('mlp', 'conv4', ...).

    ``started_with`` is the thread count a resumed run's checkpoint records: the same count again, because
    a convolution's sums are split by thread, so another count changes the weights in their last bits.
    Otherwise the rule the Python API uses too (``fastadapt.threads.threads_for``).
    """
    if cfg.training.threads is not None:
        return cfg.training.threads, "as --threads asked"
    if started_with is not None:
        return started_with, "as the run was started, so it continues exactly; --threads N to change"
    threads, why = threads_for(model_name, available_cores(), busy_cores())
    return threads, f"{why}; --threads N to change"
