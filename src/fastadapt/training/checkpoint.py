"""Checkpoints that survive a kill: written to a temporary file, then atomically renamed.

A checkpoint holds everything needed to continue a run bit for bit: the
learner, the outer optimizer, the iteration, the best validation score and the
state of every random number generator the loop draws from.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


def rng_state(task_generator: torch.Generator) -> dict[str, Any]:
    state = {
        "tasks": task_generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], task_generator: torch.Generator) -> None:
    task_generator.set_state(state["tasks"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: What a checkpoint may hold besides tensors and plain containers: numpy's random state is a uint32 array.
#: Loading is ``weights_only``, so a checkpoint cannot run code, whoever wrote it.
_NUMPY_ARRAYS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` so that ``path`` is always either the old or the new complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {path} is unreadable or corrupt ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or "learner" not in payload or "config" not in payload:
        raise ValueError(f"checkpoint {path} is not a fastadapt checkpoint (missing learner/config)")
    return payload
