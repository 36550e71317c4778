"""Evaluation by the field's protocol: a metric per fixed test task, reported as
mean and 95% confidence interval over the tasks (1.96 standard errors; Student's t quantile under
SMALL_SAMPLE tasks)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.metrics import Metric
from fastadapt.tasks.base import Batch
from fastadapt.training.precision import autocast


#: Up to this many test classes, an interval over episodes alone understates the uncertainty (see
#: ``class_clustered``), and classification results get the interval over classes where it is wider.
FEW_TEST_CLASSES = 20
#: Under this many tasks an interval uses Student's t quantile instead of the normal 1.96: at 19, 21 and 40
#: tasks 1.96 is 3-7% too narrow; at 100 tasks t is 1.984, 1.2% wider than 1.96, and the gap shrinks from there.
SMALL_SAMPLE = 100


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile for ``df`` degrees of freedom (the half-width factor of a 95% interval).

    Solves P(|T| <= t) = 0.95 by bisection on the exact finite series of Student's distribution for an integer
    number of degrees of freedom (Abramowitz & Stegun 26.7.3-4), so it needs no statistics package."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")

    def central(t: float) -> float:  # P(|T| <= t)
        theta = math.atan(t / math.sqrt(df))
        c2, s = math.cos(theta) ** 2, math.sin(theta)
        term, total = 1.0, 1.0
        if df % 2 == 0:
            for j in range(2, df, 2):  # 1 + (1/2) c^2 + (1*3)/(2*4) c^4 + ...
                term *= c2 * (j - 1) / j
                total += term
            return s * total
        if df == 1:
            return 2 * theta / math.pi
        for j in range(3, df, 2):  # 1 + (2/3) c^2 + (2*4)/(3*5) c^4 + ...
            term *= c2 * (j - 1) / j
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)

    low, high = 1.9, 13.0  # t(1) = 12.706 is the widest, the normal 1.96 the narrowest
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if central(middle) < 0.95 else (low, middle)
    return (low + high) / 2


def ci95_factor(n: int) -> float:
    """The number of standard errors in the half-width of a 95% interval over ``n`` values."""
    return t_quantile_975(n - 1) if n < SMALL_SAMPLE else 1.96


@dataclass(frozen=True)
class Estimate:
    """A mean and the half-width of its 95% interval over ``num_tasks`` tasks; ``num_classes``: set when the
    interval is the one over that many test classes (``class_clustered``), and then said after the figures;
    ``episodes_ci95`` is then the narrower interval over episodes it replaced (kept in the JSON results)."""

    mean: float
    ci95: float
    num_tasks: int
    num_classes: int | None = None
    episodes_ci95: float | None = None

    def __str__(self) -> str:
        if not math.isfinite(self.mean):  # e.g. Meta-SGD's learned step sizes applied for more steps than trained
            return "diverged"
        classes = "" if self.num_classes is None else f" ({self.num_classes} test classes)"
        return f"{self.mean:.4f} ± {self.ci95:.4f}{classes}"

    def __repr__(self) -> str:
        """Short, for a printed dict: the mean to the interval's second significant digit ("3.07 ± 0.20")."""
        if not math.isfinite(self.mean):
            return "diverged"
        digits = max(0, 1 - math.floor(math.log10(self.ci95))) if self.ci95 > 0 else 4
        return f"{self.mean:.{digits}f} ± {self.ci95:.{digits}f}"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def at_least(self, target: float) -> str:
        """The verdict on an at-least target: "met" only when the whole 95% interval lies at or above it (a
        mean above the target whose interval reaches below it could be chance, and says so)."""
        if self.mean - self.ci95 >= target:
            return "met"
        if self.mean >= target:
            return f"NOT met: the mean is above, but the 95% interval reaches {self.mean - self.ci95:.2f}"
        return "NOT met"


def mean_and_ci95(values: torch.Tensor) -> Estimate:
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("cannot summarise an empty set of task results")
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return Estimate(values.mean().item(), (ci95_factor(n) if n > 1 else 0.0) * std / math.sqrt(n), n)


def class_clustered(per_label: torch.Tensor, classes: torch.Tensor) -> Estimate:
    """Mean accuracy of the episodes, with a 95% interval that accounts for how few test classes there are.

    ``per_label`` (episodes, n_way): each episode's accuracy on the queries of each of its classes;
    ``classes`` (episodes, n_way): which test class each was. The usual interval (1.96 standard errors over
    episodes) treats the episodes as independent draws, but they are all drawn from the same k test classes:
    with 1,000 2-way episodes from 2 classes it measures how well the model tells *those two* apart, to a
    precision that says nothing about new classes. Here the classes are the units, as in a cluster-sampled
    survey: each class's accuracy averaged over all its episodes, and a t interval (k - 1 degrees of freedom)
    over those k class means. It captures how much accuracy varies from class to class, which dominates
    when k is small, and is conservative in that each class mean still carries its episodes' noise (a class's
    accuracy also depends on the classes it was paired with, which this treats as part of that noise).
    The wider of the two intervals is returned, with ``num_classes`` set when it is the class one.
    """
    episodes = mean_and_ci95(per_label.mean(1))
    ids, inverse = classes.flatten().unique(return_inverse=True)
    k = ids.numel()
    if k < 2 or k > FEW_TEST_CLASSES:
        return episodes
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, per_label.flatten().double())
    class_means = sums / torch.bincount(inverse, minlength=k)
    half = t_quantile_975(k - 1) * class_means.std(unbiased=True).item() / math.sqrt(k)
    if half <= episodes.ci95:
        return episodes
    return Estimate(episodes.mean, half, episodes.num_tasks, k, episodes.ci95)


@torch.no_grad()
def per_task_results(
    learner: MetaLearner, batches: Iterable[Batch], steps: Sequence[int | None], device: torch.device | str = "cpu",
    precision: str = "fp32", advance: Callable[[int], object] | None = None, by_label: bool = False,
) -> dict[int | None, torch.Tensor]:
    """The metric of every task after each number of adaptation steps (None = the learner's default), with the
    forward passes in ``precision`` (a bf16 run is evaluated as it was trained). ``advance(n)`` is called after
    each chunk of n tasks (a progress bar's ``update``). ``by_label`` (classification): each task's metric on
    the queries of each label, (tasks, n_way) (the metric's ``per_label``), instead of its metric.

    For an RL learner the metric is a task's mean return (``evaluate_returns``: new trajectories before
    each adaptation step, from the task's own seed, so the result is the same every call). A metric's
    companions (segmentation: localisation beside mask IoU) come under their names."""
    was_training = learner.training
    learner.eval()
    results: dict[int | str | None, list[torch.Tensor]] = {s: [] for s in steps}
    try:
        for batch in batches:
            with autocast(precision, device):
                scores = learner.score_tasks(batch.to(device), list(steps), by_label)
            for key, value in scores.items():  # the steps asked, and the metric's companions by name
                results.setdefault(key, []).append(value.cpu())
            if advance is not None:
                advance(len(batch))
    finally:
        learner.train(was_training)
    return {s: torch.cat(r) for s, r in results.items()}


def evaluate(
    learner: MetaLearner,
    batches: Iterable[Batch],
    steps: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    advance: Callable[[int], object] | None = None,
    classes: torch.Tensor | None = None,
) -> dict[int | None, Estimate]:
    """Mean ± 95% CI of the metric. ``steps`` sweeps adaptation steps for gradient-based learners. ``classes``
    (tasks, n_way): the test class of each label of each classification episode, for ``class_clustered``."""
    sweep: Sequence[int | None] = list(steps) if (steps and learner.uses_adaptation_steps) else [None]
    results = per_task_results(learner, batches, sweep, device, precision, advance, by_label=classes is not None)
    if classes is not None:
        return {s: class_clustered(v, classes) for s, v in results.items()}
    return {s: mean_and_ci95(v) for s, v in results.items()}


def step_label(steps: int | None) -> str:
    return "adapted" if steps is None else f"{steps} step{'' if steps == 1 else 's'}"


def row_label(metric: Metric, key: int | str | None) -> str:
    """The results row of an ``evaluate`` key: a number of steps, None (the learner's own adaptation: the
    metric's ``adapted_row``), or the name of one of the metric's companions (its ``adapted_row``)."""
    if isinstance(key, str):
        return next(companion.adapted_row for companion in metric.companions if companion.name == key)
    return metric.adapted_row if key is None else step_label(key)


def format_table(columns: dict[str, dict[str, Estimate]], title: str) -> str:
    """A text table: one column per learner, one row per setting (e.g. adaptation steps)."""
    row_names = list(dict.fromkeys(r for column in columns.values() for r in column))
    rows = [["", *columns]]
    rows += [[r, *(str(c[r]) if r in c else "-" for c in columns.values())] for r in row_names]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
