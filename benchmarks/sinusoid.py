"""Sinusoid regression at the MAML paper's settings: MAML, first-order MAML and Meta-SGD
for K = 5, 10, 20, each evaluated on 1,000 fixed test tasks after 0, 1 and 10 steps. A row where some tasks
diverge (a non-finite MSE: the mean says "diverged") also says on how many, and the median MSE over all tasks.

    python benchmarks/sinusoid.py --iterations 70000 --output-dir runs/bench-sinusoid

Each run is an ordinary ``fastadapt train`` run directory, so an interrupted
benchmark resumes where it stopped when started again with the same arguments.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastadapt.config.presets import load_preset
from fastadapt.runs.directory import fixed_batches, load_run, train
from fastadapt.training.builders import build_tasks, fixed_seed
from fastadapt.training.evaluation import format_table, mean_and_ci95, per_task_results, step_label


def divergence(values: torch.Tensor) -> str | None:
    """"diverged on 3 of 1,000 tasks (median 0.0415)" when some tasks' MSE is not finite (those count as the
    largest in the median), else None."""
    bad = int((~values.isfinite()).sum())
    if not bad:
        return None
    median = values.nan_to_num(nan=float("inf")).median().item()
    return f"diverged on {bad} of {values.numel():,} tasks (median {median:.4f})"


def per_task_mse(cfg, learner) -> dict[str, torch.Tensor]:
    """Every test task's MSE after each of the run's evaluation steps (what ``evaluate_learner`` averages)."""
    batches = fixed_batches(build_tasks(cfg, "test"), cfg.evaluation.test_tasks, "test", seed=fixed_seed(cfg, "test"))
    return {step_label(s): v for s, v in per_task_results(learner, batches, cfg.evaluation.eval_steps).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=70_000)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--algorithms", nargs="+", default=["maml", "metasgd"])
    parser.add_argument("--output-dir", default="runs/bench-sinusoid")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the 1-40-40-1 MLP gains nothing from more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    columns, records = {}, []
    for algorithm in args.algorithms:
        for k in args.shots:
            cfg = load_preset(f"sinusoid-{algorithm}").replace(
                k_shot=k, iterations=args.iterations, eval_steps=[0, 1, 10],
                output_dir=str(Path(args.output_dir) / f"{algorithm}-k{k}"))
            start = time.perf_counter()
            train(cfg, resume=(Path(cfg.training.output_dir) / "last.pt").exists(), progress=False)
            seconds = time.perf_counter() - start
            cfg, learner = load_run(cfg.training.output_dir, "best")
            per_task = per_task_mse(cfg, learner)
            results = {row: mean_and_ci95(values) for row, values in per_task.items()}
            diverged = {row: note for row, values in per_task.items() if (note := divergence(values))}
            columns[f"{algorithm} K={k}"] = results
            records.append({"algorithm": algorithm, "k_shot": k, "iterations": args.iterations,
                            "train_seconds": round(seconds, 1),
                            "results": {row: e.to_dict() for row, e in results.items()}, "diverged": diverged})
            print(f"{algorithm} K={k}: " + ", ".join(f"{row} {diverged.get(row, e)}" for row, e in results.items())
                  + f" ({seconds:.0f} s)", flush=True)
    tasks = next(iter(next(iter(columns.values())).values())).num_tasks
    print(format_table(columns, f"Sinusoid MSE on {tasks:,} test tasks, {args.iterations} meta-iterations "
                                "(mean ± 95% CI)"))
    Path(args.output_dir, "results.json").write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
