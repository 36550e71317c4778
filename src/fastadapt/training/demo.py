"""The embedded default job: MAML on sinusoid regression against the pretrained baseline.

Runs in a few minutes on two CPU cores with no download, and reproduces the
shape of the MAML paper's regression result: a meta-learned initialisation that
fits a new sinusoid from 10 points in one gradient step, while a network
trained on all tasks jointly cannot.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.plots import plot_learning_curves, plot_sinusoid_adaptation
from fastadapt.tasks import SinusoidTasks
from fastadapt.training.config import Config
from fastadapt.training.evaluation import format_table
from fastadapt.training.runs import evaluate_learner, load_metrics, train

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
    tasks = SinusoidTasks(k_shot=10)
    generator = torch.Generator().manual_seed(seed)
    amp, phase = tasks.sample_functions(num_panels, generator)
    support_x = -5 + 10 * torch.rand(num_panels, 10, 1, generator=generator)
    support_y = tasks.evaluate(amp, phase, support_x)
    grid = torch.linspace(-5, 5, 200).view(1, -1, 1).expand(num_panels, -1, -1)
    truth = tasks.evaluate(amp, phase, grid)
    curves: list[dict] = [{} for _ in range(num_panels)]
    for name, learner in learners.items():
        learner.eval()
        for steps in FIGURE_STEPS:
            label = f"{name}, {'pre-update' if steps == 0 else f'{steps} step' + ('s' if steps > 1 else '')}"
            predictions = learner.predict(learner.adapt(support_x, support_y, steps=steps), grid)
            for i in range(num_panels):
                curves[i][label] = predictions[i, :, 0].numpy()
    return [{"x": grid[i, :, 0].numpy(), "truth": truth[i, :, 0].numpy(), "support_x": support_x[i, :, 0].numpy(),
             "support_y": support_y[i, :, 0].numpy(), "curves": curves[i],
             "title": f"A={amp[i].item():.2f}, phase={phase[i].item():.2f}"} for i in range(num_panels)]


def run_demo(output_dir: str | Path = "runs/demo", iterations: int = 20_000, seed: int = 0,
             progress: bool = True) -> dict:
    output_dir = Path(output_dir)
    start = time.perf_counter()
    results, learners = {}, {}
    for name, cfg in demo_configs(output_dir, iterations, seed).items():
        _, learner = train(cfg, resume=True, progress=progress)
        learners[name] = learner
        results[name] = evaluate_learner(cfg, learner)
        plot_learning_curves(load_metrics(cfg.training.output_dir), Path(cfg.training.output_dir) / "learning_curves.png",
                             title=f"{name} on sinusoid regression")
    figure = plot_sinusoid_adaptation(adaptation_panels({"MAML": learners["MAML"]}), output_dir / "sinusoid.png")
    baseline_figure = plot_sinusoid_adaptation(adaptation_panels({"pretrained": learners["pretrained"]}),
                                               output_dir / "sinusoid_pretrained.png")
    summary = {
        "table": format_table(results, "Sinusoid regression, K=10, MSE on 1,000 test tasks (mean ± 95% CI)"),
        "results": {name: {row: e.to_dict() for row, e in rows.items()} for name, rows in results.items()},
        "figures": [str(figure), str(baseline_figure)],
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output_dir / "results.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
    return summary
