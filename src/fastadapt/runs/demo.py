"""The embedded default job: MAML on sinusoid regression against the pretrained baseline.

Runs in a few minutes on two CPU cores with no download, and reproduces the
shape of the MAML paper's regression result: a meta-learned initialisation that
fits a new sinusoid from 10 points in one gradient step, while a network
trained on all tasks jointly cannot.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.config.schema import Config
from fastadapt.plots import plot_learning_curves, plot_sinusoid_adaptation
from fastadapt.runs.directory import evaluate_learner, load_metrics, load_run, train
from fastadapt.tasks import SinusoidTasks
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.evaluation import format_table, step_label
from fastadapt.training.trainer import LAST

FIGURE_STEPS = (0, 1, 10)


def demo_configs(output_dir: Path, iterations: int, seed: int) -> dict[str, Config]:
    """MAML at the paper's settings, and the pretrained baseline fine-tuned with the same steps."""
    maml = Config(algorithm="maml", tasks="sinusoid", k_shot=10, inner_lr=0.01, inner_steps=1, meta_lr=1e-3,
                  meta_batch_size=25, iterations=iterations, seed=seed, log_every=500, val_every=2500,
                  checkpoint_every=2500, val_tasks=200, test_tasks=1000, eval_steps=list(FIGURE_STEPS),
                  output_dir=str(output_dir / "maml"))
    pretrained = maml.replace(algorithm="pretrained", iterations=max(1, iterations // 4),
                              output_dir=str(output_dir / "pretrained"))
    return {"MAML": maml, "pretrained": pretrained}


@torch.no_grad()
def adaptation_panels(learners: dict[str, MetaLearner], num_panels: int = 3, seed: int = 7) -> list[dict]:
    """The MAML paper's Figure 2 data for a few test sinusoids: truth, support points, and each learner's
    predictions after 0, 1 and 10 steps on the same support points."""
    tasks = SinusoidTasks(k_shot=10)
    generator = torch.Generator().manual_seed(seed)
    amp, phase = tasks.sample_functions(num_panels, generator)
    support_x = -5 + 10 * torch.rand(num_panels, 10, 1, generator=generator)
    support_y = tasks.evaluate(amp, phase, support_x)
    grid = torch.linspace(-5, 5, 200).view(1, -1, 1).expand(num_panels, -1, -1)
    truth = tasks.evaluate(amp, phase, grid)
    panels = [{"x": grid[i, :, 0].numpy(), "truth": truth[i, :, 0].numpy(), "support_x": support_x[i, :, 0].numpy(),
               "support_y": support_y[i, :, 0].numpy(), "curves": {},
               "title": f"A = {amp[i].item():.2f}, phase = {phase[i].item():.2f}"} for i in range(num_panels)]
    for name, learner in learners.items():
        learner.eval()
        for steps in FIGURE_STEPS:
            predictions = learner.predict(learner.adapt(support_x, support_y, steps=steps), grid)
            for i, panel in enumerate(panels):
                panel["curves"].setdefault(name, {})[step_label(steps)] = predictions[i, :, 0].numpy()
    return panels


def _finished_or_fresh(cfg: Config, overwrite: bool, say: Callable[[str], None]) -> str:
    """What to do with ``cfg``'s run directory: 'train' it afresh, 'resume' an interrupted run with the same
    settings, or 'reuse' a finished one. A run with other settings is refused unless ``overwrite``, so that
    a config.yaml never describes weights it did not produce."""
    run_dir = Path(cfg.training.output_dir)
    if not (run_dir / "config.yaml").exists():
        return "train"
    saved = Config.load(run_dir / "config.yaml")
    if saved != cfg.resolved() and not overwrite:
        changed = sorted(k for k, v in cfg.resolved().flat().items() if saved.flat()[k] != v)
        raise FileExistsError(f"{run_dir} holds a demo run with other settings ({', '.join(changed)}); pass "
                              "--overwrite to retrain it there, or --output-dir to train elsewhere")
    if saved != cfg.resolved() or not (run_dir / LAST).exists():  # other settings, or killed before a checkpoint
        shutil.rmtree(run_dir)
        return "train"
    done = load_checkpoint(run_dir / LAST)["iteration"]
    if done == cfg.training.iterations:
        say(f"reusing the finished run in {run_dir} ({done} iterations; --overwrite to retrain)")
        return "reuse"
    return "resume"


def run_demo(output_dir: str | Path = "runs/demo", iterations: int = 20_000, seed: int = 0,
             progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or reuse) both runs, evaluate them on the same 1,000 test tasks, draw the paper's figure."""
    output_dir = Path(output_dir)
    start = time.perf_counter()
    results, learners = {}, {}

    def say(message: str) -> None:
        print(f"fastadapt: {message}", file=sys.stderr)

    for name, cfg in demo_configs(output_dir, iterations, seed).items():
        action = _finished_or_fresh(cfg, overwrite, say)
        if action != "reuse":
            train(cfg, resume=action == "resume", progress=progress)
        _, learner = load_run(cfg.training.output_dir, "best")  # tested as fastadapt eval tests: the best validation
        learners[name] = learner
        results[name] = evaluate_learner(cfg, learner)
        plot_learning_curves(load_metrics(cfg.training.output_dir),
                             Path(cfg.training.output_dir) / "learning_curves.png",
                             title=f"{name} on sinusoid regression")
    figure = plot_sinusoid_adaptation(adaptation_panels(learners), output_dir / "sinusoid.png")
    summary = {
        "table": format_table(results, f"Sinusoid regression, K=10, MSE on {results['MAML']['0 steps'].num_tasks:,} "
                                       "test tasks (mean ± 95% CI)"),
        "results": {name: {row: e.to_dict() for row, e in rows.items()} for name, rows in results.items()},
        "figure": str(figure),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output_dir / "results.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
    return summary
