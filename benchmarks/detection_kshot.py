"""K-shot detection in clutter (our extension of cluttered Omniglot, not comparable with Michaelis et al.): AP50 and
COCO AP, mean ± 95% CI over the same fixed episodes, for each run at each number of shots.

    fastadapt train --tasks cluttered-omniglot-detection --algorithm template-detector --n-way 3 --k-shot 1 \\
        --num-query 4 --characters 8 --iterations 0 --no-eval --data-root <OMNIGLOT> --output-dir runs/det-template
    python benchmarks/detection_kshot.py runs/det-template runs/det-proto-1 --shots 1 5 --episodes 60

Every run is scored on the same episodes (their ways, canvases per episode and drawings per canvas must agree),
rebuilt at each number of shots from the run's settings: validation episodes by default, the run's test set
with ``--split test``, each (run, shots) row then counted as one look in the run's test_looks.json (and its test set and
looks so far written in the row of ``--json``).
"""
from __future__ import annotations

import argparse
import json
import time

from fastadapt.algorithms.metrics import AP50, COCO_AP
from fastadapt.runs.directory import count_test_look, load_run
from fastadapt.threads import using_threads
from fastadapt.training.builders import build_tasks, fixed_seed
from fastadapt.training.evaluation import evaluate

#: Episodes scored in one call.
CHUNK = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories of detection methods")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--episodes", type=int, default=60, help="fixed episodes per row")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    loaded = [(run, *load_run(run, "best")) for run in args.runs]
    shapes = {(cfg.task.n_way, cfg.task.num_query, cfg.task.characters) for _, cfg, _ in loaded}
    if len(shapes) > 1:
        parser.error(f"the runs' episodes differ (ways, canvases, drawings): {sorted(shapes, key=str)}")
    rows = []
    print(f"{'method':<20} {'run':<24} {'trained':>7} {'shots':>5}  {'AP50':<17} {'COCO AP':<17} {'seconds':>7}",
          flush=True)
    with using_threads(args.threads):
        for shots in args.shots:
            for run, cfg, learner in loaded:
                tasks = build_tasks(cfg.replace(k_shot=shots), args.split)
                looks = count_test_look(run, cfg.evaluation.test_set) if args.split == "test" else 0
                start = time.perf_counter()
                episodes = tasks.fixed_tasks(args.episodes, args.split, seed=fixed_seed(cfg, args.split))
                results = evaluate(learner, episodes.split(CHUNK))
                seconds = time.perf_counter() - start
                ap50, coco = results[None], results[COCO_AP.name]
                trained = "-" if cfg.training.iterations == 0 else str(cfg.task.k_shot)
                print(f"{cfg.method.name:<20} {run:<24} {trained:>7} {shots:>5}  {ap50!s:<17} {coco!s:<17} "
                      f"{seconds:7.0f}", flush=True)
                rows.append({"method": cfg.method.name, "run": run, "trained_shots": cfg.task.k_shot,
                             "iterations": cfg.training.iterations, "shots": shots, "split": args.split,
                             "episodes": args.episodes, AP50.name: ap50.to_dict(), COCO_AP.name: coco.to_dict(),
                             "seconds": seconds,
                             **({"test_set": cfg.evaluation.test_set, "test_looks": looks} if looks else {})})
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
