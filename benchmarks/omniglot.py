"""Few-shot classification on Omniglot test characters: train shipped presets, then print the
field's table (mean accuracy ± 95% CI over 600 fixed test episodes, 15 queries per class).

    python benchmarks/omniglot.py omniglot-protonet-cpu omniglot-knn-pixels
    python benchmarks/omniglot.py omniglot-maml --set iterations=2000 --output-dir runs/bench-omniglot
    python benchmarks/omniglot.py --startup            # seconds from launch to the first episode

Each run is an ordinary ``fastadapt train`` run directory under --output-dir, so
a stopped benchmark resumes when started again with the same arguments; the
training wall time, the machine and every setting are printed with the table
and written to results.json. Omniglot is found as ``fastadapt`` finds it
(--data-root, $FASTADAPT_DATA, else downloaded into the cache).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from fastadapt.algorithms.mann import MANN, accuracy_by_instance, shuffle_sequence
from fastadapt.config.presets import load_preset
from fastadapt.config.schema import Config
from fastadapt.runs.directory import evaluate_learner, load_metrics, load_run, train
from fastadapt.tasks import EpisodeTasks
from fastadapt.training.builders import build_tasks, fixed_seed
from fastadapt.training.evaluation import format_table


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}"


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs, values read as YAML (so 5, 1e-3, [5, 20] and true mean what they say)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


FIRST_EPISODE = """
import sys
from fastadapt.config.presets import load_preset
from fastadapt.runs.directory import build_learner
from fastadapt.training.builders import build_tasks
from fastadapt.training.trainer import Trainer
cfg = load_preset(sys.argv[1]).replace(**({"data_root": sys.argv[2]} if len(sys.argv) > 2 else {}))
tasks = build_tasks(cfg, "train")
learner = build_learner(cfg, tasks)
build_tasks(cfg, "val")
Trainer(cfg, learner, tasks, progress=False).sample()
"""


def startup_seconds(preset: str, data_root: str | None) -> float:
    """Wall time of a fresh Python process doing what ``fastadapt train PRESET`` does before its first
    training step: imports, the train and val data (from the decoded cache after the first run), the
    model, the optimizer, and the first episode batch."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", FIRST_EPISODE, preset, *([data_root] if data_root else [])], check=True)
    return time.perf_counter() - start


@torch.no_grad()
def mann_instance_accuracy(cfg: Config, learner: MANN, num_tasks: int, instances: int = 10) -> dict[int, float]:
    """Santoro et al.'s protocol: accuracy at the 1st, 2nd, 3rd, 5th and 10th presentation of each class in
    fixed test sequences of n_way x ``instances`` images in a random order, labels shown one step late."""
    episodes = EpisodeTasks(build_tasks(cfg, "test").dataset, cfg.task.n_way, instances - 1, 1)
    torch.manual_seed(0)
    correct: dict[int, list[float]] = {}
    learner.eval()
    for batch in episodes.iter_fixed_tasks(num_tasks, 100, split="test", seed=fixed_seed(cfg, "test")):
        x, y = shuffle_sequence(torch.cat([batch.support_x, batch.query_x], 1),
                                torch.cat([batch.support_y, batch.query_y], 1))
        for k, accuracy in accuracy_by_instance(learner.sequence_logits(x, y), y).items():
            correct.setdefault(k, []).append(accuracy * len(batch))
    return {k: sum(v) / num_tasks for k, v in correct.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", help="shipped preset names or YAML paths")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings of every preset")
    parser.add_argument("--data-root", help="folder holding the Omniglot zips (default: $FASTADAPT_DATA or download)")
    parser.add_argument("--output-dir", default="runs/bench-omniglot")
    parser.add_argument("--startup", action="store_true", help="also time a run's start (twice: the first may decode)")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    if args.data_root:
        overrides["data_root"] = args.data_root

    print(f"machine: {machine()}", flush=True)
    if args.startup:
        first, second = (startup_seconds("omniglot-protonet", args.data_root) for _ in range(2))
        print(f"from launch to the first episode of `fastadapt train omniglot-protonet`: {first:.1f} s, "
              f"then {second:.1f} s", flush=True)

    columns, records = {}, []
    for preset in args.presets:
        name = Path(preset).stem
        cfg = load_preset(preset).replace(**overrides, output_dir=str(Path(args.output_dir) / name))
        train(cfg, resume=(Path(cfg.training.output_dir) / "last.pt").exists(), progress=False)
        metrics = load_metrics(cfg.training.output_dir) if cfg.training.iterations else []
        train_seconds = metrics[-1]["seconds"] if metrics else 0.0  # the run's own clock, across resumes
        start = time.perf_counter()
        cfg, learner = load_run(cfg.training.output_dir, "best")
        results = evaluate_learner(cfg, learner)
        columns[name] = results
        if isinstance(learner, MANN):
            by_instance = mann_instance_accuracy(cfg, learner, cfg.evaluation.test_tasks)
            records.append({"preset": preset, "accuracy_by_instance": by_instance})
            print(f"{name}: accuracy by instance on {cfg.evaluation.test_tasks} test sequences of "
                  f"{cfg.task.n_way} classes x 10: "
                  + ", ".join(f"{k}: {v:.4f}" for k, v in by_instance.items()), flush=True)
        records.append({"preset": preset, "train_seconds": train_seconds, "config": cfg.to_dict(),
                        "results": {row: e.to_dict() for row, e in results.items()}})
        iterations = metrics[-1]["iteration"] if metrics else 0
        print(f"{name}: {iterations} iterations, {train_seconds / 60:.1f} min of training, evaluated in "
              f"{time.perf_counter() - start:.0f} s; "
              + ", ".join(f"{row} {e}" for row, e in results.items()), flush=True)
    if columns:
        print(format_table(columns, f"Omniglot test accuracy, {cfg.evaluation.test_tasks} fixed episodes with "
                                    f"{cfg.evaluation.eval_query} queries per class (mean ± 95% CI); {machine()}"))
        Path(args.output_dir, "results.json").write_text(json.dumps({"machine": machine(), "runs": records}, indent=2))


if __name__ == "__main__":
    main()
