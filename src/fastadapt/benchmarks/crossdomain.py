"""Cross-domain few-shot table: trained runs evaluated on their own test classes and on another
domain (scikit-learn's handwritten digits by default), mean accuracy ± 95% CI over fixed episodes.

    python benchmarks/crossdomain.py ProtoNet=runs/protonet MAML=runs/maml Baseline=runs/baseline
    python benchmarks/crossdomain.py Baseline=runs/baseline --json baseline.json     # one run, saved
    python benchmarks/crossdomain.py --combine protonet.json maml.json baseline.json  # the table of saved ones

Nothing is trained: each run's best checkpoint (chosen on validation when it was trained) is
evaluated once per domain and setting. The Markdown table and a JSON file of every figure are printed
/ written; the gap of each method from its own domain to the other is printed below the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastadapt.config.families import family_of
from fastadapt.runs.crossdomain import evaluate_cross_domain
from fastadapt.runs.directory import evaluate_learner, load_run


def evaluate_run(run_dir: str, domain: str, settings: list[tuple[int, int]], test_tasks: int) -> dict:
    cfg, learner = load_run(run_dir)
    ways, shots = sorted({w for w, _ in settings}), sorted({s for _, s in settings})
    cfg = cfg.replace(test_tasks=test_tasks, eval_ways=ways, eval_shots=shots, eval_steps=[])
    own = evaluate_learner(cfg, learner)
    other, title = evaluate_cross_domain(run_dir, cfg, learner, domain)
    split = f" ({cfg.task.dataset_split} split)" if family_of(cfg).dataset_splits else ""
    label = f"{cfg.task.family} test{split}"
    return {"run_dir": run_dir, "method": cfg.method.name, "own": label, "other": domain, "title": title,
            "results": {label: {k: v.to_dict() for k, v in own.items()},
                        domain: {k: v.to_dict() for k, v in other.items()}}}


def table(runs: dict[str, dict], settings: list[tuple[int, int]]) -> str:
    columns = [(f"{w}-way {s}-shot", which) for which in ("own", "other") for w, s in settings]
    header = "| method | " + " | ".join(f"{'own test' if which == 'own' else runs[next(iter(runs))]['other']}, {row}"
                                         for row, which in columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 1)]
    for name, run in runs.items():
        cells = []
        for row, which in columns:
            estimate = run["results"][run[which]].get(row)
            cells.append("-" if estimate is None else f"{100 * estimate['mean']:.2f} ± {100 * estimate['ci95']:.2f}")
        lines.append(f"| {name} ({run['own']}) | " + " | ".join(cells) + " |")
    lines.append("")
    for name, run in runs.items():
        for w, s in settings:
            row = f"{w}-way {s}-shot"
            own, other = run["results"][run["own"]].get(row), run["results"][run["other"]].get(row)
            if own and other:
                lines.append(f"{name}, {row}: {100 * own['mean']:.2f} on its own test classes, "
                             f"{100 * other['mean']:.2f} on {run['other']}: "
                             f"{100 * (other['mean'] - own['mean']):+.2f} points")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", metavar="NAME=RUN_DIR")
    parser.add_argument("--domain", default="digits", help="the other task family (default: digits)")
    parser.add_argument("--ways", type=int, nargs="+", default=[5])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="print the table of saved JSON files instead")
    args = parser.parse_args(argv)
    settings = [(w, s) for w in args.ways for s in args.shots]
    if args.combine:
        runs = {}
        for path in args.combine:
            runs.update(json.loads(Path(path).read_text())["runs"])
    else:
        if not args.runs or any("=" not in r for r in args.runs):
            parser.error("give runs as NAME=RUN_DIR, or --combine saved JSON files")
        runs = {}
        for spec in args.runs:
            name, run_dir = spec.split("=", 1)
            runs[name] = evaluate_run(run_dir, args.domain, settings, args.test_tasks)
            print(f"{name}: {runs[name]['title']}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": runs, "test_tasks": args.test_tasks}, indent=2) + "\n")
    print(table(runs, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
