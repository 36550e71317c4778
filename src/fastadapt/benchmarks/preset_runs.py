"""The runs a benchmark script trains or reuses, one per preset, in the script's output directory."""
from __future__ import annotations

import hashlib
import sys
from functools import cache
from pathlib import Path

import fastadapt
from fastadapt.config.schema import Config
from fastadapt.runs.directory import trained_run

#: Settings that change where or how fast a run is computed, not what it computes.
BOOKKEEPING = ("output_dir", "threads", "rollout_workers", "log_every", "tensorboard")


@cache
def code_version() -> str:
    """fastadapt's version and a digest of its source files: results measured by other code are stale."""
    digest = hashlib.sha256()
    package = Path(fastadapt.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{fastadapt.__version__}+{digest.hexdigest()[:12]}"


def results_key(cfg: Config) -> dict:
    """What a benchmark's kept result of a run depends on: the run's settings (less ``BOOKKEEPING``) and the
    code. A kept result whose key differs is measured again, not reused."""
    settings = {k: v for k, v in cfg.resolved().flat().items() if k not in BOOKKEEPING}
    return {"settings": settings, "code": code_version()}


def given_settings(**values: object) -> dict:
    """The settings a benchmark's command line gave (``--seed``, ``--test-set``, ...): those left out (None) keep
    the preset's value."""
    return {name: value for name, value in values.items() if value is not None}


def preset_run(cfg: Config, script: str, train_missing: bool = True) -> Path:
    """``trained_run`` for the benchmark ``script``: a directory that holds a run of other settings (made by an
    older version of the preset), one trained longer than the preset asks, or no run when ``train_missing`` is off
    is a one-line error with exit status 2, not a traceback."""
    try:
        return trained_run(cfg, train_missing)
    except (ValueError, FileNotFoundError) as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        sys.exit(2)
