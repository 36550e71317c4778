"""The one interface every meta-learner shares.

A meta-learner is an ``nn.Module`` holding everything that is meta-trained.
It answers three questions, always for a whole batch of tasks at once:

* ``adapt(support_x, support_y, steps)``: what it learns from each task's
  support set (fast weights, class prototypes, a memory state...);
* ``predict(adapted, query_x)``: its outputs on each task's query set;
* ``meta_loss(tasks)``: a scalar whose gradient is the method's meta-gradient,
  which the trainer hands to the outer optimizer.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.tasks.base import TaskBatch

LOSSES = ("mse", "cross_entropy")


def per_task_loss(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of each task: outputs (tasks, examples, out), targets (tasks, examples[, out]) -> (tasks,)."""
    if kind == "mse":
        if outputs.shape != targets.shape:
            raise ValueError(f"mse loss: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ")
        return ((outputs - targets) ** 2).flatten(1).mean(1)
    if kind == "cross_entropy":
        if outputs.shape[:-1] != targets.shape:
            raise ValueError(
                f"cross_entropy loss: outputs {tuple(outputs.shape)} must be targets {tuple(targets.shape)} + (classes,)"
            )
        losses = F.cross_entropy(outputs.flatten(0, -2), targets.flatten(), reduction="none")
        return losses.view(targets.shape).flatten(1).mean(1)
    raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")


def per_task_metric(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """The evaluation metric of each task: MSE for regression, accuracy for classification."""
    if kind == "cross_entropy":
        return (outputs.argmax(-1) == targets).float().flatten(1).mean(1)
    return per_task_loss(outputs, targets, kind)


class MetaLearner(nn.Module):
    """Base class; subclasses implement ``adapt`` and ``predict`` and may override ``meta_loss``."""

    #: whether ``adapt`` takes a number of gradient steps (so evaluation can sweep it)
    uses_adaptation_steps = False

    def __init__(self, loss: str) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        self.loss = loss

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        raise NotImplementedError

    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def task_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return per_task_loss(outputs, targets, self.loss)

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss after adaptation; returns (loss to minimise, metrics to log)."""
        outputs = self.predict(self.adapt(tasks.support_x, tasks.support_y), tasks.query_x)
        loss = self.task_losses(outputs, tasks.query_y).mean()
        return loss, self.metrics(outputs, tasks.query_y, loss)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
        metrics = {"loss": loss.item()}
        if self.loss == "cross_entropy":
            metrics["accuracy"] = per_task_metric(outputs.detach(), targets, self.loss).mean().item()
        return metrics
