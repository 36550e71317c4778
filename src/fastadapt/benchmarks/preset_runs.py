"""The runs a benchmark script trains or reuses, one per preset, in the script's output directory."""
from __future__ import annotations

import sys
from pathlib import Path

from fastadapt.training.config import Config
from fastadapt.training.runs import trained_run


def preset_run(cfg: Config, script: str, train_missing: bool = True) -> Path:
    """``trained_run`` for the benchmark ``script``: a directory that holds a run of other settings (made by an
    older version of the preset) is a one-line error with exit status 2, not a traceback."""
    try:
        return trained_run(cfg, train_missing)
    except ValueError as error:
        print(f"{script}: error: {error}; its preset has changed since: give another --output-dir", file=sys.stderr)
        sys.exit(2)
