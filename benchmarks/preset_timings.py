"""Seconds per training iteration of every shipped preset on this machine, for `fastadapt presets`.

    python benchmarks/preset_timings.py --data-root ../shared/data/omniglot        # prints the table
    python benchmarks/preset_timings.py --data-root ... --write                      # and updates timings.json

Each preset is built as `fastadapt train` builds it (same thread choice), then timed over a few training
steps after a warm-up step; validation, checkpoints and the final evaluation are not included. Run it on an
otherwise idle machine: the figures are what `fastadapt presets` prints as expected training time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import resources
from pathlib import Path

import torch

from fastadapt.runs.directory import build_learner

from fastadapt.config.presets import load_preset, preset_names
from fastadapt.training.builders import build_tasks
from fastadapt.training.networks import resolve_model
from fastadapt.training.threads import choose_threads, using_threads
from fastadapt.training.trainer import Trainer


def seconds_per_iteration(name: str, data_root: str | None, steps: int) -> float | None:
    cfg = load_preset(name).resolved()
    if cfg.training.iterations == 0:
        return None
    if data_root and cfg.task.family == "omniglot":
        cfg = cfg.replace(data_root=data_root)
    threads, _ = choose_threads(cfg, resolve_model(cfg))
    with using_threads(threads):
        tasks = build_tasks(cfg, "train")
        trainer = Trainer(cfg, build_learner(cfg, tasks), tasks, progress=False)
        trainer.step(trainer.sample())  # warm-up: allocations, kernel selection
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step(trainer.sample())
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", help="presets to time (default: all)")
    parser.add_argument("--data-root", help="folder holding the Omniglot zips (default: $FASTADAPT_DATA or download)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset (default: 5)")
    parser.add_argument("--write", action="store_true", help="update src/fastadapt/config/presets/timings.json")
    args = parser.parse_args()
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU"
    timings = {}
    for name in args.presets or preset_names():
        per_iteration = seconds_per_iteration(name, args.data_root, args.steps)
        if per_iteration is not None:
            timings[name] = round(per_iteration, 4)
            print(f"{name:28s} {per_iteration:8.3f} s/iteration", flush=True)
    if args.write:
        path = Path(str(resources.files("fastadapt.config.presets").joinpath("timings.json")))
        old = json.loads(path.read_text()) if path.exists() else {}
        merged = {**old.get("seconds_per_iteration", {}), **timings}
        path.write_text(json.dumps({"machine": machine, "torch": torch.__version__,
                                    "measured": time.strftime("%Y-%m-%d"),
                                    "seconds_per_iteration": dict(sorted(merged.items())),
                                    "full_runs": old.get("full_runs", {})}, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
