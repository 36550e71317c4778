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

import functools
from typing import Any, Callable

import torch
from torch import nn

from fastadapt.algorithms.metrics import RETURN, at_least_fp32, loss_named
from fastadapt.tasks.base import TaskBatch

def in_fp32(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``function`` on its tensor arguments in at least fp32, with autocast off: for the reductions that
    become logits (prototypes, distances, similarities), where bf16's 8-bit mantissa would cost accuracy
    (a squared distance |q|^2 + |c|^2 - 2 q.c loses everything to cancellation between close points)."""

    @functools.wraps(function)
    def wrapped(*tensors: torch.Tensor) -> torch.Tensor:
        with torch.autocast(tensors[0].device.type, enabled=False):
            return function(*map(at_least_fp32, tensors))

    return wrapped


def per_task_loss(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of each task: outputs (tasks, examples, out), targets (tasks, examples[, out]) -> (tasks,).

    Computed in at least fp32 whatever the outputs' precision (bf16 under mixed precision)."""
    return loss_named(kind).per_task(outputs, targets)


def per_task_metric(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """The evaluation metric of each task: MSE for regression, accuracy for classification."""
    return loss_named(kind).metric.per_task(outputs, targets)


class MetaLearner(nn.Module):
    """Base class; subclasses implement ``adapt`` and ``predict`` and may override ``meta_loss``."""

    #: whether ``adapt`` takes a number of gradient steps (so evaluation can sweep it)
    uses_adaptation_steps = False
    #: whether the trainer steps it: the gradient of ``meta_loss`` and one step of the trainer's optimizer
    #: (an RL learner takes its whole outer update itself, ``meta_update``)
    updates_itself = False
    #: whether that update needs the trainer's optimizer
    uses_optimizer = True
    #: whether ``adapt`` reads the support set as a sequence and was trained on random orders of it, so that
    #: evaluation episodes must present their support in a (fixed) random order too, not class by class
    reads_support_in_order = False
    #: whether ``meta_loss`` on a fixed-shape batch runs the same kernels every call, with no host
    #: synchronisation and no branch on tensor values, so that one CUDA graph may capture the whole step
    #: (training.captured); a learner claims it only where that has been checked
    captures_whole_step = False
    #: set while a captured step records ``meta_loss``: ``metrics`` then returns detached tensors, as reading
    #: a value back to the host (``.item()``) cannot be captured and would wait for the GPU every step
    metrics_as_tensors = False

    def __init__(self, loss: str) -> None:
        super().__init__()
        self.loss = loss
        #: what its tasks are scored by in evaluation and checkpoint selection
        self.metric = loss_named(loss).metric

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        raise NotImplementedError

    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def class_probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """P(class | query) from ``predict``'s outputs (tasks, queries, classes): a softmax of scores."""
        return torch.softmax(outputs, dim=-1)

    def task_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return per_task_loss(outputs, targets, self.loss)

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss after adaptation; returns (loss to minimise, metrics to log)."""
        outputs = self.predict(self.adapt(tasks.support_x, tasks.support_y), tasks.query_x)
        loss = self.task_losses(outputs, tasks.query_y).mean()
        return loss, self.metrics(outputs, tasks.query_y, loss)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
        metrics = {"loss": loss.detach()}
        if self.metric.name != self.loss:  # a metric other than the loss itself (accuracy), logged beside it
            metrics[self.metric.name] = self.metric.per_task(outputs.detach(), targets).mean()
        return metrics if self.metrics_as_tensors else {key: value.item() for key, value in metrics.items()}

    def score_tasks(self, batch: TaskBatch, steps: list[int | None], by_label: bool = False
                    ) -> dict[int | None, torch.Tensor]:
        """Each task's metric after each number of adaptation steps in ``steps`` (None: the learner's own); with
        ``by_label``, its metric on the queries of each label (``metric.per_label``)."""
        score = self.metric.per_label if by_label else self.metric.per_task
        return {s: score(self.predict(self.adapt(batch.support_x, batch.support_y, steps=s), batch.query_x),
                         batch.query_y) for s in steps}


# --- checks and helpers shared by the learners that read a support set (metric- and model-based) ---


def check_no_steps(steps: int | None, method: str) -> None:
    if steps is not None:
        raise ValueError(f"{method} adapts by reading the support set, not by gradient steps; got steps={steps}")


def check_labels(x: torch.Tensor, y: torch.Tensor, n_way: int, method: str,
                 x_name: str = "support_x", y_name: str = "support_y") -> None:
    """x must be (tasks, examples, *features) and y (tasks, examples) integer class labels in 0..n_way-1."""
    if x.dim() < 3 or y.dim() != 2 or x.shape[:2] != y.shape:
        raise ValueError(
            f"{method}: {x_name} {tuple(x.shape)} must be (tasks, examples, *features) and "
            f"{y_name} {tuple(y.shape)} must be (tasks, examples) to match"
        )
    if y.dtype != torch.long:
        raise TypeError(f"{method}: {y_name} must hold int64 class labels, got {y.dtype}")
    if ((y < 0) | (y >= n_way)).any():
        raise ValueError(f"{method}: {y_name} labels must lie in 0..{n_way - 1} for a {n_way}-way learner, "
                         f"got values in {y.min().item()}..{y.max().item()}")


def check_queries(query_x: torch.Tensor, tasks: int, method: str) -> None:
    if query_x.dim() < 3 or query_x.shape[0] != tasks:
        raise ValueError(f"{method}: query_x {tuple(query_x.shape)} must be (tasks, queries, *features) "
                         f"with the {tasks} tasks of the support set")


def embed_images(encoder: nn.Module, x: torch.Tensor, method: str, encoder_dim: int | None = None) -> torch.Tensor:
    """One encoder pass over all examples of all tasks: (tasks, examples, *features) -> (tasks, examples, D).

    Features come out flattened; with ``encoder_dim`` their width D is checked.
    """
    features = encoder(x.flatten(0, 1)).flatten(1)
    if encoder_dim is not None and features.shape != (x.shape[0] * x.shape[1], encoder_dim):
        raise ValueError(f"{method}: the encoder must map a batch (B, *features) to (B, encoder_dim={encoder_dim}); "
                         f"it gave {tuple(features.shape)} for input {tuple(x.flatten(0, 1).shape)}")
    return features.unflatten(0, x.shape[:2])


class RLMetaLearner(nn.Module):
    """Meta-reinforcement learners: they act in a batch of MDPs (an ``MDPBatch``) instead of reading support sets.

    * ``meta_update(tasks, optimizer)``: one outer update from fresh rollouts in ``tasks``; returns metrics to log.
      The learner owns its update because it is not one optimizer step on one loss: TRPO is a constrained
      step with a line search (``optimizer`` is None), PPO takes several epochs of steps with ``optimizer``.
    * ``evaluate_returns(tasks, steps)``: each task's mean return after each number of adaptation steps in
      ``steps`` (gradient-based learners), or over its trial (``{None: ...}``, learners that adapt in-context).
    """

    #: whether evaluation sweeps a number of adaptation (gradient) steps
    uses_adaptation_steps = False
    #: it takes its whole outer update itself (``meta_update``)
    updates_itself = True
    #: whether ``meta_update`` needs the trainer's optimizer
    uses_optimizer = True
    #: its tasks are scored by their mean return
    metric = RETURN
    #: (support sets are for supervised learners; an RL learner reads none)
    reads_support_in_order = False
    #: set by a distributed trainer when processes share a meta-batch: averages a tensor over them (an
    #: all-reduce), for learners whose update needs more than averaged gradients (TRPO's line search)
    process_mean: Callable[[torch.Tensor], torch.Tensor] | None = None

    def meta_update(self, tasks, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        raise NotImplementedError

    def evaluate_returns(self, tasks, steps: list[int] | None = None) -> dict[int | None, torch.Tensor]:
        raise NotImplementedError

    def score_tasks(self, tasks, steps: list[int | None], by_label: bool = False) -> dict[int | None, torch.Tensor]:
        """Each task's mean return after each number of adaptation steps in ``steps`` (``[None]``: over its
        trial), as ``MetaLearner.score_tasks`` scores supervised tasks; returns have no labels."""
        if by_label:
            raise ValueError("an RL task's return has no labels to score separately")
        returns = self.evaluate_returns(tasks, None if list(steps) == [None] else list(steps))
        return {s: returns[s] for s in steps}
