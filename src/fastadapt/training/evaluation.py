"""Evaluation by the field's protocol: a metric per fixed test task, reported as
mean and 95% confidence interval (1.96 standard errors) over the tasks."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch

from fastadapt.algorithms.base import MetaLearner, RLMetaLearner, per_task_metric
from fastadapt.tasks.base import TaskBatch
from fastadapt.training.precision import autocast


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci95: float
    num_tasks: int

    def __str__(self) -> str:
        if not math.isfinite(self.mean):  # e.g. Meta-SGD's learned step sizes applied for more steps than trained
            return "diverged"
        return f"{self.mean:.4f} ± {self.ci95:.4f}"

    def __repr__(self) -> str:
        """Short, for a printed dict: the mean to the interval's second significant digit ("3.07 ± 0.20")."""
        if not math.isfinite(self.mean):
            return "diverged"
        digits = max(0, 1 - math.floor(math.log10(self.ci95))) if self.ci95 > 0 else 4
        return f"{self.mean:.{digits}f} ± {self.ci95:.{digits}f}"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def mean_and_ci95(values: torch.Tensor) -> Estimate:
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("cannot summarise an empty set of task results")
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return Estimate(values.mean().item(), 1.96 * std / math.sqrt(n), n)


def metric_name(learner: MetaLearner | RLMetaLearner) -> str:
    if isinstance(learner, RLMetaLearner):
        return "return"
    return "accuracy" if learner.loss == "cross_entropy" else "mse"


def higher_is_better(learner: MetaLearner | RLMetaLearner) -> bool:
    return metric_name(learner) in ("accuracy", "return")


@torch.no_grad()
def per_task_results(
    learner: MetaLearner, batches: Iterable[TaskBatch], steps: Sequence[int | None], device: torch.device | str = "cpu",
    precision: str = "fp32", advance: Callable[[int], object] | None = None,
) -> dict[int | None, torch.Tensor]:
    """The metric of every task after each number of adaptation steps (None = the learner's default), with the
    forward passes in ``precision`` (a bf16 run is evaluated as it was trained). ``advance(n)`` is called after
    each chunk of n tasks (a progress bar's ``update``).

    For an RL learner the metric is a task's mean return (``evaluate_returns``: new trajectories before
    each adaptation step, from the task's own seed, so the result is the same every call)."""
    was_training = learner.training
    learner.eval()
    results: dict[int | None, list[torch.Tensor]] = {s: [] for s in steps}
    try:
        for batch in batches:
            batch = batch.to(device)
            if isinstance(learner, RLMetaLearner):
                returns = learner.evaluate_returns(batch, None if list(steps) == [None] else list(steps))
                for s in steps:
                    results[s].append(returns[s].cpu())
            else:
                for s in steps:
                    with autocast(precision, device):
                        adapted = learner.adapt(batch.support_x, batch.support_y, steps=s)
                        outputs = learner.predict(adapted, batch.query_x)
                    results[s].append(per_task_metric(outputs, batch.query_y, learner.loss).cpu())
            if advance is not None:
                advance(len(batch))
    finally:
        learner.train(was_training)
    return {s: torch.cat(r) for s, r in results.items()}


def evaluate(
    learner: MetaLearner,
    batches: Iterable[TaskBatch],
    steps: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    advance: Callable[[int], object] | None = None,
) -> dict[int | None, Estimate]:
    """Mean ± 95% CI of the metric. ``steps`` sweeps adaptation steps for gradient-based learners."""
    sweep: Sequence[int | None] = list(steps) if (steps and learner.uses_adaptation_steps) else [None]
    results = per_task_results(learner, batches, sweep, device, precision, advance)
    return {s: mean_and_ci95(v) for s, v in results.items()}


def step_label(steps: int | None) -> str:
    return "adapted" if steps is None else f"{steps} step{'' if steps == 1 else 's'}"


def format_table(columns: dict[str, dict[str, Estimate]], title: str) -> str:
    """A text table: one column per learner, one row per setting (e.g. adaptation steps)."""
    row_names = list(dict.fromkeys(r for column in columns.values() for r in column))
    rows = [["", *columns]]
    rows += [[r, *(str(c[r]) if r in c else "-" for c in columns.values())] for r in row_names]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
