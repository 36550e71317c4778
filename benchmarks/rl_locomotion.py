"""HalfCheetah forward/backward (Finn et al. 2017, section 5.3, Figure 5): MAML-RL against the pretrained and
random-initialisation baselines, each evaluated on the same 40 fixed test tasks after 0, 1, 2 and 3
policy-gradient steps, beside the paper's MAML row.

    python benchmarks/rl_locomotion.py --output-dir runs/bench-cheetah            # the CPU-budget presets
    python benchmarks/rl_locomotion.py --output-dir runs/bench-cheetah --no-train # evaluate the runs as they are
    python benchmarks/rl_locomotion.py --output-dir runs/cheetah-seed1 --seed 1 --test-set 2  # another training
                                                                                    # seed, a fresh draw of test tasks

1. trains the runs of the presets rl-halfcheetah-fwd-bwd-maml-cpu and rl-halfcheetah-fwd-bwd-pretrained-cpu
   (rl-halfcheetah-fwd-bwd-random trains nothing); a finished run is reused and an interrupted one resumed,
   a run made with other settings than the preset's is refused;
   with ``--no-train`` the runs' best checkpoints are evaluated as they are, and the table says how many
   iterations each had;
2. chooses the test-time step size of the pretrained and random-init baselines on the *validation* tasks (first
   step alpha from a grid, later steps alpha / 2 as for MAML) by the mean return after one step; MAML keeps the
   paper's alpha = 0.1, then 0.05;
3. evaluates every method on the test tasks, prints the table (and the 1-step return of the forward and the
   backward tasks apart), checks the issue's targets, and writes results.json and the Figure-5-style plot.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastadapt.benchmarks.preset_runs import given_settings, preset_run, results_key
from fastadapt.config.presets import load_preset
from fastadapt.config.schema import Config
from fastadapt.plots import plot_adaptation_curves
from fastadapt.runs.directory import count_test_look, fixed_batches, load_run, record_evaluation_settings
from fastadapt.training.builders import build_tasks, fixed_seed
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.evaluation import Estimate, format_table, mean_and_ci95, per_task_results, step_label
from fastadapt.training.trainer import BEST, LAST

PRESETS = {"MAML": "rl-halfcheetah-fwd-bwd-maml-cpu", "pretrained": "rl-halfcheetah-fwd-bwd-pretrained-cpu",
           "random init": "rl-halfcheetah-fwd-bwd-random"}
#: Finn et al. 2017, appendix C: MAML on HalfCheetah forward/backward after 0, 1, 2, 3 steps (horizon 200)
PAPER_MAML = {0: -50.69, 1: 293.19, 2: 313.48, 3: 315.65}
PAPER_HORIZON = 200
STEP_SIZES = [0.05, 0.1, 0.2, 0.5]
STEPS = [0, 1, 2, 3]


def run_dir_of(preset: str, output_dir: Path, train_missing: bool, **settings) -> tuple[str, dict]:
    """The preset's run in ``output_dir`` with ``settings`` (seed, test_set, rollout_workers), trained or resumed
    to its iterations unless ``train_missing`` is off."""
    cfg = load_preset(preset).replace(output_dir=str(output_dir / preset), **settings)
    run_dir = preset_run(cfg, "rl_locomotion", train_missing)
    last = load_checkpoint(run_dir / LAST) if (run_dir / LAST).exists() else None
    best = load_checkpoint(run_dir / BEST)
    return str(run_dir), {"iterations_trained": (last or best)["iteration"], "best_iteration": best["iteration"],
                          "planned_iterations": cfg.training.iterations,
                          "train_seconds": round((last or best).get("seconds", 0.0), 1)}


def returns_by_task(cfg, learner, split: str, num_tasks: int, steps: list[int]) -> tuple[dict, torch.Tensor]:
    """Every fixed task's mean return after each number of steps, and each task's direction (+1 / -1)."""
    batches = list(fixed_batches(build_tasks(cfg, split), num_tasks, split, seed=fixed_seed(cfg, split)))
    results = per_task_results(learner, batches, steps)
    return results, torch.cat([batch.env.tasks[:, 0] for batch in batches])


def choose_step_size(cfg, learner, num_tasks: int) -> tuple[float, dict[float, float]]:
    """The first-step size (later steps: half of it) with the best mean 1-step return on the validation tasks."""
    scores = {}
    for alpha in STEP_SIZES:
        learner.eval_inner_lrs = [alpha, alpha / 2]
        scores[alpha] = returns_by_task(cfg, learner, "val", num_tasks, [1])[0][1].mean().item()
    return max(scores, key=scores.get), scores


def evaluate_method(name: str, output_dir: Path, args: argparse.Namespace) -> dict:
    """One method's evaluation: the step size chosen on validation tasks (baselines), then every test task's
    return after 0-3 steps; kept in OUTPUT_DIR/eval-<preset>.json and reused while its best checkpoint, the run's
    settings and the code are the same (``results_key``); else measured again, the test look counted."""
    preset = PRESETS[name]
    settings = given_settings(seed=args.seed, test_set=args.test_set, rollout_workers=args.rollout_workers)
    run_dir, facts = run_dir_of(preset, output_dir, not args.no_train, **settings)
    cache = output_dir / f"eval-{preset}.json"
    key = results_key(Config.load(Path(run_dir) / "config.yaml"))
    if cache.exists():
        kept = json.loads(cache.read_text())
        if kept["run"]["best_iteration"] == facts["best_iteration"] and kept.get("key") == key:
            print(f"{name}: reusing {cache} (best checkpoint of iteration {facts['best_iteration']}, the same "
                  "settings and code)")
            return kept
        print(f"{name}: {cache} was measured on another best checkpoint, settings or code: measuring again")
    start = time.perf_counter()
    cfg, learner = load_run(run_dir, "best")
    if args.rollout_workers is not None:
        cfg = cfg.replace(rollout_workers=args.rollout_workers)
    evaluation: dict = {"run": {"run_dir": run_dir, **facts}, "key": key}
    if name != "MAML":
        alpha, scores = choose_step_size(cfg, learner, cfg.training.val_tasks)
        learner.eval_inner_lrs = [alpha, alpha / 2]
        record_evaluation_settings(run_dir, eval_inner_lrs=learner.eval_inner_lrs)  # fastadapt eval uses it too
        evaluation["step_size"] = {"chosen": alpha, "validation 1-step return": scores}
        print(f"{name}: step size {alpha} chosen on {cfg.training.val_tasks} validation tasks "
              f"({', '.join(f'{a}: {s:.2f}' for a, s in scores.items())})", flush=True)
    evaluation["test_set"], evaluation["seed"] = cfg.evaluation.test_set, cfg.training.seed
    evaluation["test_looks"] = count_test_look(run_dir, cfg.evaluation.test_set)
    results, directions = returns_by_task(cfg, learner, "test", cfg.evaluation.test_tasks, STEPS)
    evaluation["results"] = {step_label(s): mean_and_ci95(values).to_dict() for s, values in results.items()}
    evaluation["by_direction"] = {
        label: {step_label(s): mean_and_ci95(values[directions == sign]).to_dict() for s, values in results.items()}
        for label, sign in (("forward", 1.0), ("backward", -1.0))}
    evaluation["run"]["evaluation_seconds"] = round(time.perf_counter() - start, 1)
    cache.write_text(json.dumps(evaluation, indent=2) + "\n")
    print(f"{name} ({preset}: {facts['iterations_trained']} of {facts['planned_iterations']} iterations, best at "
          f"{facts['best_iteration']}, {facts['train_seconds'] / 60:.1f} min of training; evaluated in "
          f"{time.perf_counter() - start:.0f} s): "
          + ", ".join(f"{row} {Estimate(**e)}" for row, e in evaluation["results"].items()), flush=True)
    return evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/bench-cheetah")
    parser.add_argument("--no-train", action="store_true", help="evaluate the runs' best checkpoints as they are")
    parser.add_argument("--seed", type=int, help="every run's training seed (default: the presets'); the validation "
                                                  "and test tasks do not depend on it")
    parser.add_argument("--test-set", type=int, help="which draw of the test tasks (default: the presets', 1)")
    parser.add_argument("--rollout-workers", type=int, help="rollout worker processes (default: one per core)")
    parser.add_argument("--methods", nargs="+", choices=list(PRESETS), default=list(PRESETS),
                        help="evaluate only these (the table needs all three; each method's evaluation is kept in "
                             "OUTPUT_DIR/eval-<preset>.json and reused while its best checkpoint is the same)")
    args = parser.parse_args()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    columns: dict[str, dict[str, Estimate]] = {}
    record: dict = {"runs": {}, "step_sizes": {}, "results": {}, "by_direction": {}, "seeds": {}, "test_looks": {}}
    for name in args.methods:
        evaluation = evaluate_method(name, output_dir, args)
        record["test_set"], record["seeds"][name] = evaluation["test_set"], evaluation["seed"]
        record["test_looks"][name] = evaluation["test_looks"]
        record["runs"][name], record["results"][name] = evaluation["run"], evaluation["results"]
        record["by_direction"][name] = evaluation["by_direction"]
        if "step_size" in evaluation:
            record["step_sizes"][name] = evaluation["step_size"]
        columns[name] = {row: Estimate(**e) for row, e in evaluation["results"].items()}
    if set(args.methods) != set(PRESETS):
        return

    horizon = load_preset(PRESETS["MAML"]).task.horizon
    table = dict(columns)
    table[f"MAML (paper, H={PAPER_HORIZON})"] = {step_label(s): f"{v:.2f}" for s, v in PAPER_MAML.items()}
    print()
    print(format_table(table, f"HalfCheetah forward/backward, horizon {horizon}: return (sum over {horizon} steps of "
                              "direction x forward velocity - 0.05 |a|^2), 20 trajectories per task, mean ± 95% CI "
                              f"over {columns['MAML']['1 step'].num_tasks} fixed test tasks"))
    per_step = {name: columns[name]["1 step"].mean / horizon for name in columns}
    print("\nmean reward per step after 1 step: " + ", ".join(f"{n} {v:.3f}" for n, v in per_step.items())
          + f"; the paper's MAML {PAPER_MAML[1] / PAPER_HORIZON:.3f} (its horizon is {PAPER_HORIZON} steps, ours "
            f"{horizon}: returns are sums over the horizon, so compare per step)")
    maml, pretrained = columns["MAML"]["1 step"], columns["pretrained"]["1 step"]
    gap = (maml.mean - maml.ci95) - (pretrained.mean + pretrained.ci95)
    directions = record["by_direction"]["MAML"]
    forward, backward = (Estimate(**directions[sign]["1 step"]) for sign in ("forward", "backward"))
    print(f"MAML after 1 step vs pretrained after 1 step: 95% CIs {'do not overlap' if gap > 0 else 'OVERLAP'} "
          f"(gap {gap:.2f}; target: no overlap)")
    print(f"MAML after 1 step: forward tasks {forward!r} ({forward.at_least(0)}), backward tasks {backward!r} "
          f"({backward.at_least(0)}) (target: both positive)")
    record.update(ci_gap=gap, maml_1_step_forward=forward.mean, maml_1_step_backward=backward.mean)
    figure = plot_adaptation_curves(
        {name: {s: (columns[name][step_label(s)].mean, columns[name][step_label(s)].ci95) for s in STEPS}
         for name in columns},
        output_dir / "adaptation_curves.png",
        title=f"HalfCheetah forward/backward, horizon {horizon}: {columns['MAML']['1 step'].num_tasks} test tasks, "
              "mean ± 95% CI",
        references={f"MAML (paper, horizon {PAPER_HORIZON}) x {horizon}/{PAPER_HORIZON}":
                    {s: v * horizon / PAPER_HORIZON for s, v in PAPER_MAML.items()}})
    (output_dir / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {output_dir / 'results.json'} and {figure}")


if __name__ == "__main__":
    main()
