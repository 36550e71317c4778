"""Runs on Lake et al.'s within-alphabet 20-way 1-shot VALIDATION trials, with and without test-time
augmentation of the support image (ProtoNet's support_views): how docs/results.md chooses a recipe for the
Omniglot challenge without looking at the test trials.

    python benchmarks/within_alphabet_val.py runs/a runs/b --views 1 8 --trials 1000

Each run's best checkpoint is scored on the same fixed validation trials (the 5 alphabets the background
split holds out of training), once per number of support views; the table gives mean ± 95% CI over trials.
Only runs trained on the background split alone are accepted (as for the test trials).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastadapt.config.schema import WITHIN_ALPHABET
from fastadapt.runs.directory import fixed_batches, load_run
from fastadapt.training.builders import build_tasks
from fastadapt.training.evaluation import evaluate, format_table
from fastadapt.training.threads import using_threads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (ProtoNet for --views above 1)")
    parser.add_argument("--views", type=int, nargs="+", default=[1], help="support views to try (default: 1)")
    parser.add_argument("--trials", type=int, default=1000, help="fixed validation trials (default: 1000)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    args = parser.parse_args(argv)
    columns = {}
    with using_threads(args.threads):
        for run in args.runs:
            cfg, learner = load_run(run, "best")
            if max(args.views) > 1 and not hasattr(learner, "support_views"):
                parser.error(f"{run} is a {cfg.method.name} run; --views above 1 are ProtoNet's support_views")
            trials = build_tasks(cfg.replace(episodes=WITHIN_ALPHABET), "val")
            column = {}
            for views in args.views:
                learner.support_views = views
                estimate = evaluate(learner, fixed_batches(trials, args.trials, "val"))[None]
                column[f"{views} support view{'s' * (views > 1)}"] = estimate
                print(f"{run}, {views} support views: {estimate}", file=sys.stderr, flush=True)
            columns[Path(run).name] = column
    print(format_table(columns, f"within-alphabet 20-way 1-shot, {args.trials} fixed validation trials "
                                "(mean ± 95% CI over trials)"))


if __name__ == "__main__":
    main()
