"""One-shot segmentation in clutter at several levels (characters per canvas), as in Michaelis et al.'s table:
mask IoU and the 5-pixel localisation score, mean ± 95% CI over the same fixed official canvases, for each run at
each level.

    python benchmarks/cluttered_omniglot_levels.py RUN [RUN ...] --levels 4 8 16 32 --canvases 1000 \\
        --output-dir runs/levels [--split test] [--json FILE]

A run may have been trained at any level: what a method reads of a canvas does not depend on how many characters
it holds, so for each level the script saves a run of that level starting from the run's weights (as
`fastadapt train ... --characters N --init-from RUN --iterations 0` does; a method with nothing to train is saved
as it is) in OUTPUT_DIR/<run's name>-<level>, and scores it on the first CANVASES official canvases of the
split's last job (val-one-shot by default; test-one-shot with ``--split test``, each row then counted as one look
in that level's run: test_looks.json, and in the JSON). After each level it says whether the first run's
interval lies above every other run's ("apart").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fastadapt.algorithms.metrics import LOCALISATION, MASK_IOU
from fastadapt.benchmarks.preset_runs import preset_run
from fastadapt.runs.directory import evaluate_learner, load_run, look_at_test_set, looks_at_test_set

SCRIPT = "cluttered_omniglot_levels"


def level_run(run: Path, level: int, canvases: int, output_dir: Path) -> Path:
    """The run of ``run``'s method and weights at ``level`` characters, made once in ``output_dir``."""
    cfg, _ = load_run(run, "best")
    changes = {"init_from": str(run)} if cfg.training.iterations else {}
    return preset_run(cfg.replace(characters=level, iterations=0, test_tasks=canvases,
                                  output_dir=str(output_dir / f"{run.name}-{level}"), **changes), SCRIPT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of segmentation methods")
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--canvases", type=int, default=1000, help="fixed official canvases per level")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/levels"))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    print(f"{'level':>5}  {'method':<18} {'run':<28} {'mask IoU':<16} {'localisation':<16} {'seconds':>7}",
          flush=True)
    for level in args.levels:
        ious = []
        for run in args.runs:
            run_dir = level_run(run, level, args.canvases, args.output_dir)
            cfg, learner = load_run(run_dir, "best")
            start = time.perf_counter()
            if args.split == "test":
                results = look_at_test_set(run_dir, cfg, learner)
            else:
                results = evaluate_learner(cfg, learner, split="val")
            seconds = time.perf_counter() - start
            iou, localisation = results[MASK_IOU.adapted_row], results[LOCALISATION.adapted_row]
            ious.append(iou)
            print(f"{level:>5}  {cfg.method.name:<18} {str(run):<28} {iou!s:<16} {localisation!s:<16} "
                  f"{seconds:7.0f}", flush=True)
            rows.append({"level": level, "method": cfg.method.name, "run": str(run), "split": args.split,
                         "canvases": args.canvases, MASK_IOU.name: iou.to_dict(),
                         LOCALISATION.name: localisation.to_dict(), "seconds": seconds,
                         **({"test_set": cfg.evaluation.test_set,
                             "test_looks": looks_at_test_set(run_dir, cfg.evaluation.test_set)}
                            if args.split == "test" else {})})
        if len(ious) > 1:
            first, others = ious[0], ious[1:]
            apart = all(first.mean - first.ci95 > other.mean + other.ci95 for other in others)
            print(f"{level:>5}  first run's mask IoU interval above every other's: {'apart' if apart else 'NOT apart'}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
