"""2D navigation (Finn et al. 2017, section 5.3): MAML-RL against the pretrained, random-initialisation and
oracle baselines, each evaluated on the same fixed test goals (400, the presets' test_tasks) after 0, 1, 2 and 3
policy-gradient steps.

    python benchmarks/rl_nav2d.py --output-dir runs/bench-nav2d
    python benchmarks/rl_nav2d.py --output-dir runs/nav2d-seed1 --seed 1 --test-set 2   # another training seed,
                                                                                        # a fresh draw of test goals

1. trains the runs of the presets rl-nav2d-maml, rl-nav2d-pretrained and rl-nav2d-oracle (rl-nav2d-random
   trains nothing); a finished run is reused and an interrupted one resumed, so the script can be restarted;
2. chooses the test-time step size of the pretrained and random-init baselines on as many *validation* goals
   (first step alpha from a grid, later steps alpha / 2 as for MAML), by the mean return after one step;
   MAML keeps the paper's alpha = 0.1, then 0.05; with --choose-later-steps, every adapting method's second
   and third step size is then chosen from the same grid by the mean return after two validation steps;
3. evaluates every method on the test goals, prints the table beside the paper's MAML row, checks the
   issue's targets (and prints the per-goal difference between MAML and the pretrained policy after one
   step, a paired comparison on the same goals) and writes results.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastadapt.benchmarks.preset_runs import given_settings, preset_run
from fastadapt.config.presets import load_preset
from fastadapt.config.schema import Config
from fastadapt.runs.directory import (count_test_look, evaluate_learner, fixed_batches, load_run,
                                      record_evaluation_settings)
from fastadapt.training.builders import build_tasks, fixed_seed
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.evaluation import Estimate, format_table, mean_and_ci95, per_task_results, step_label
from fastadapt.training.trainer import BEST, LAST

PRESETS = {"MAML": "rl-nav2d-maml", "pretrained": "rl-nav2d-pretrained", "random init": "rl-nav2d-random",
           "oracle": "rl-nav2d-oracle"}
#: Finn et al. 2017, appendix C: MAML's mean return after 0, 1, 2, 3 steps on 2D navigation
PAPER_MAML = {"0 steps": -40.41, "1 step": -11.68, "2 steps": -3.33, "3 steps": -3.23}
STEP_SIZES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


def finished_run(preset: str, output_dir: Path, **settings) -> tuple[str, float]:
    """The preset's run in ``output_dir`` with ``settings`` (seed, test_set, threads), trained, resumed or reused;
    its directory and training seconds."""
    cfg = load_preset(preset).replace(output_dir=str(output_dir / preset), **settings)
    run_dir = preset_run(cfg, "rl_nav2d")
    last = load_checkpoint(run_dir / LAST) if (run_dir / LAST).exists() else load_checkpoint(run_dir / BEST)
    return str(run_dir), last.get("seconds", 0.0)


def best_on_validation(cfg: Config, learner, schedule, steps: int) -> tuple[float, dict[float, float]]:
    """The grid's step size alpha whose test-time schedule ``schedule(alpha)`` (the size of each step) gives the
    best mean return after ``steps`` steps on the validation goals; the mean return of every size tried."""
    scores = {}
    for alpha in STEP_SIZES:
        learner.eval_inner_lrs = schedule(alpha)
        scores[alpha] = evaluate_learner(cfg, learner, steps=[steps], split="val")[step_label(steps)].mean
    return max(scores, key=scores.get), scores


def choose_step_size(cfg: Config, learner) -> tuple[float, dict[float, float]]:
    """The first-step size (later steps: half of it) with the best mean 1-step return on the validation goals."""
    return best_on_validation(cfg, learner, lambda alpha: [alpha, alpha / 2], 1)


def choose_later_step_size(cfg: Config, learner, first: float) -> tuple[float, dict[float, float]]:
    """The size of the second and later steps, after a first step of ``first``, with the best mean 2-step return
    on the validation goals (``--choose-later-steps``: the paper's alpha / 2 is one of the sizes tried)."""
    return best_on_validation(cfg, learner, lambda alpha: [first, alpha], 2)


def test_returns(cfg: Config, learner) -> dict[str, torch.Tensor]:
    """Every test goal's mean return after each of the run's evaluation steps ("0 steps", "1 step", ...)."""
    batches = fixed_batches(build_tasks(cfg, "test"), cfg.evaluation.test_tasks, "test", seed=fixed_seed(cfg, "test"))
    results = per_task_results(learner, batches, cfg.evaluation.eval_steps)
    return {step_label(steps): returns for steps, returns in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/bench-nav2d")
    parser.add_argument("--seed", type=int, help="every run's training seed (default: the presets'); the validation "
                                                  "and test goals do not depend on it")
    parser.add_argument("--test-set", type=int, help="which draw of the test goals (default: the presets', 1)")
    parser.add_argument("--choose-later-steps", action="store_true",
                        help="choose every adapting method's second and third step size on the validation goals "
                             "by the 2-step return (default: half the first step, the paper's schedule)")
    args = parser.parse_args()
    settings = given_settings(seed=args.seed, test_set=args.test_set)
    output_dir = Path(args.output_dir)
    torch.set_num_threads(1)

    columns: dict[str, dict[str, Estimate]] = {}
    per_goal: dict[str, dict[str, torch.Tensor]] = {}
    record: dict = {"step_sizes": {}, "train_seconds": {}, "results": {}}
    for name, preset in PRESETS.items():
        start = time.perf_counter()
        run_dir, seconds = finished_run(preset, output_dir, threads=1, **settings)
        record["train_seconds"][name] = round(seconds, 1)
        cfg, learner = load_run(run_dir, "best")
        if name in ("pretrained", "random init"):
            alpha, scores = choose_step_size(cfg, learner)
            learner.eval_inner_lrs = [alpha, alpha / 2]
            record["step_sizes"][name] = {"chosen": alpha, "validation 1-step return": scores}
            print(f"{name}: step size {alpha} chosen on validation goals "
                  f"({', '.join(f'{a}: {s:.2f}' for a, s in scores.items())})", flush=True)
        if args.choose_later_steps and name != "oracle":
            later, scores = choose_later_step_size(cfg, learner, learner.eval_inner_lrs[0])
            learner.eval_inner_lrs = [learner.eval_inner_lrs[0], later]
            record["step_sizes"].setdefault(name, {}).update(later=later, **{"validation 2-step return": scores})
            print(f"{name}: later step size {later} chosen on validation goals "
                  f"({', '.join(f'{a}: {s:.2f}' for a, s in scores.items())})", flush=True)
        if name != "oracle" and learner.eval_inner_lrs != cfg.method.eval_inner_lrs:
            record_evaluation_settings(run_dir, eval_inner_lrs=learner.eval_inner_lrs)  # fastadapt eval uses it too
        record.setdefault("test_looks", {})[name] = count_test_look(run_dir, cfg.evaluation.test_set)
        record["test_set"], record.setdefault("seeds", {})[name] = cfg.evaluation.test_set, cfg.training.seed
        per_goal[name] = test_returns(cfg, learner)
        columns[name] = {row: mean_and_ci95(returns) for row, returns in per_goal[name].items()}
        record["results"][name] = {row: e.to_dict() for row, e in columns[name].items()}
        print(f"{name} ({preset}, trained {seconds / 60:.1f} min, evaluated in {time.perf_counter() - start:.0f} s "
              "incl. any training): " + ", ".join(f"{row} {e}" for row, e in columns[name].items()), flush=True)

    oracle = columns.pop("oracle")["0 steps"]
    # it needs no adaptation: its one 0-step figure, repeated at every row, and the row says so
    columns["oracle (0-step return, at every row)"] = {row: oracle for row in PAPER_MAML}
    columns["MAML (paper)"] = {row: f"{value:.2f}" for row, value in PAPER_MAML.items()}
    print()
    print(format_table(columns, f"2D navigation: mean return (sum of -L2 distances over <= 100 steps) on "
                                f"{oracle.num_tasks} fixed test goals, 20 trajectories each, mean ± 95% CI over goals"))

    maml, pretrained = columns["MAML"], columns["pretrained"]
    closer = (oracle.mean - maml["0 steps"].mean) / (oracle.mean - maml["1 step"].mean)
    gap = (maml["1 step"].mean - maml["1 step"].ci95) - (pretrained["1 step"].mean + pretrained["1 step"].ci95)
    print(f"\nafter 1 step MAML is {closer:.1f}x closer to the oracle than before (target >= 3x: "
          f"{'met' if closer >= 3 else 'NOT met'})")
    print(f"MAML after 1 step vs pretrained after 1 step: 95% CIs {'do not overlap' if gap > 0 else 'OVERLAP'} "
          f"(gap {gap:.2f})")
    paired = mean_and_ci95(per_goal["MAML"]["1 step"] - per_goal["pretrained"]["1 step"])
    print(f"per goal, MAML minus pretrained after 1 step (the same goals): {paired.mean:+.2f} ± {paired.ci95:.2f}")
    record.update(closer_to_oracle=closer, ci_gap=gap, paired_difference_1_step=paired.to_dict())
    (output_dir / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
