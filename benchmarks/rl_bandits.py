"""Bernoulli bandits (Duan et al. 2016, RL^2, section 4.1): RL^2 against random, UCB1 and Thompson sampling,
each scored by the total reward of one trial on the same 1,000 fixed test bandits (arms' probabilities ~ U[0, 1]).

    python benchmarks/rl_bandits.py --output-dir runs/bench-bandits              # n = 10, k = 5 and n = 100, k = 10
    python benchmarks/rl_bandits.py --output-dir runs/bandits-seed1 --settings 10x100 --rl2 rl-bandit-rl2 \
        --seed 1 --test-set 2                    # one RL^2 preset, another training seed, a fresh draw of test bandits

1. trains the RL^2 presets (rl-bandit-rl2-k5-n10; rl-bandit-rl2, and its two-phase recipe: rl-bandit-rl2 for
   1,000 iterations, then rl-bandit-rl2-finetune from its best weights), or reuses / resumes their runs
   (same test bandits for every method: the test split's seeds); a run directory holding a run of other
   settings than its preset (an older version) is refused;
2. chooses UCB1's exploration coefficient c on 1,000 *validation* bandits from a grid (the paper tuned its
   baselines too);
3. evaluates every method on the test bandits (plus the exact Bayes-optimal policy where its DP is small) and
   prints one table per setting, with the paper's figures the issue quotes, and writes results.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastadapt.algorithms.bandit_baselines import BAYES_OPTIMAL_LIMIT
from fastadapt.benchmarks.preset_runs import given_settings, preset_run
from fastadapt.config.presets import load_preset
from fastadapt.runs.directory import evaluate_learner, load_run, look_at_test_set, looks_at_test_set
from fastadapt.training.evaluation import Estimate, format_table

#: (arms k, pulls n) -> the RL^2 rows: (label, preset)
SETTINGS = {(5, 10): [("RL^2 (ours)", "rl-bandit-rl2-k5-n10")],
            (10, 100): [("RL^2 (ours, rl-bandit-rl2)", "rl-bandit-rl2"),
                        ("RL^2 (ours, rl-bandit-rl2 for 1,000 iterations, then rl-bandit-rl2-finetune)",
                         "rl-bandit-rl2-finetune")]}
#: a second phase -> the preset and settings of the run it starts from (named by its init_from's last part)
FIRST_PHASE = {"rl-bandit-rl2-finetune": ("rl-bandit-rl2", {"iterations": 1000})}
#: Duan et al. 2016, Table 1, as issue 12 quotes them (n = 100, k = 10)
PAPER = {(10, 100): {"RL^2": 83.5, "Gittins": 82.8, "random": 49.9}}
TARGETS = {(5, 10): 6.5, (10, 100): 80.0}
UCB_GRID = [0.0, 0.05, 0.1, 0.2, 0.5, 1.0]
ROW = "return per trial"
SCRIPT = "rl_bandits"


def rl2_run(preset: str, output_dir: Path, **settings) -> str:
    """The RL^2 preset's run in ``output_dir`` with ``settings`` (seed, test_set), trained, resumed or reused."""
    cfg = load_preset(preset).replace(output_dir=str(output_dir / preset), threads=1, **settings)
    if preset in FIRST_PHASE:
        first, changes = FIRST_PHASE[preset]
        first_cfg = load_preset(first).replace(**changes, threads=1, **settings,
                                               output_dir=str(output_dir / Path(cfg.training.init_from).name))
        cfg = cfg.replace(init_from=str(preset_run(first_cfg, SCRIPT)))
    return str(preset_run(cfg, SCRIPT))


def baseline(name: str, arms: int, pulls: int, output_dir: Path, test_set: int | None = None, **method) -> Path:
    """The run of a bandit algorithm (nothing to train: it is saved with 0 iterations), tested on ``test_set``."""
    suffix = "".join(f"-{key}{value}" for key, value in method.items())
    drawn = {} if test_set is None else {"test_set": test_set}
    cfg = load_preset(f"rl-bandit-{name}").replace(arms=arms, horizon=pulls, **method, **drawn,
                                                     output_dir=str(output_dir / f"{name}-k{arms}-n{pulls}{suffix}"))
    return preset_run(cfg, SCRIPT)


def tested(run_dir: str | Path) -> tuple[Estimate, int]:
    """The run's total reward per trial on its test bandits, and how many times that test set of the run has now
    been evaluated (counted in RUN_DIR/test_looks.json, this look included)."""
    cfg, learner = load_run(run_dir)
    return look_at_test_set(run_dir, cfg, learner)[ROW], looks_at_test_set(run_dir, cfg.evaluation.test_set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/bench-bandits")
    parser.add_argument("--settings", nargs="+", default=["5x10", "10x100"], help="k x n pairs to run")
    parser.add_argument("--rl2", nargs="+", metavar="PRESET", help="only these RL^2 presets' rows (default: all)")
    parser.add_argument("--seed", type=int, help="the RL^2 runs' training seed (default: the presets'); the "
                                                  "validation and test bandits do not depend on it")
    parser.add_argument("--test-set", type=int, help="which draw of the test bandits (default: the presets', 1)")
    args = parser.parse_args()
    settings = given_settings(seed=args.seed, test_set=args.test_set)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    record = {}
    for text in args.settings:
        arms, pulls = (int(v) for v in text.split("x"))
        column: dict[str, dict[str, Estimate | str]] = {}
        looks: dict[str, int] = {}
        rows = [(label, preset) for label, preset in SETTINGS[arms, pulls] if args.rl2 is None or preset in args.rl2]
        for label, preset in rows:
            column[label], looks[label] = tested(rl2_run(preset, output_dir, **settings))
        scores = {}
        for c in UCB_GRID:
            cfg, learner = load_run(baseline("ucb1", arms, pulls, output_dir, args.test_set, ucb_exploration=c))
            scores[c] = evaluate_learner(cfg, learner, split="val")[ROW].mean
        chosen = max(scores, key=scores.get)
        ucb1 = f"UCB1 (c = {chosen}, chosen on validation)"
        column[ucb1], looks[ucb1] = tested(
            baseline("ucb1", arms, pulls, output_dir, args.test_set, ucb_exploration=chosen))
        for name, label in (("thompson", "Thompson sampling"), ("random-arms", "random")):
            column[label], looks[label] = tested(baseline(name, arms, pulls, output_dir, args.test_set))
        if arms * pulls <= BAYES_OPTIMAL_LIMIT:
            bayes = "Bayes-optimal (exact DP, the ceiling)"
            column[bayes], looks[bayes] = tested(
                baseline("bayes-optimal", arms, pulls, output_dir, args.test_set))
        for name, value in PAPER.get((arms, pulls), {}).items():
            column[f"{name} (paper)"] = f"{value:.1f}"
        print(format_table({"total reward": column},
                           f"\nBernoulli bandits, n = {pulls} pulls, k = {arms} arms: total reward per trial on "
                           f"{column[ucb1].num_tasks:,} fixed test bandits (mean ± 95% CI); "
                           f"UCB1's c on validation: "
                           + ", ".join(f"{c}: {s:.2f}" for c, s in scores.items())))
        for label, _ in rows:
            ours, target = column[label], TARGETS[arms, pulls]
            print(f"{label}: {ours.mean:.2f} ± {ours.ci95:.2f} (target >= {target}: {ours.at_least(target)})")
        record[text] = {row: (v.to_dict() if isinstance(v, Estimate) else v) for row, v in column.items()}
        record[text].update(ucb1_validation=scores, test_set=args.test_set or 1, test_looks=looks, seed=args.seed)
    (output_dir / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
