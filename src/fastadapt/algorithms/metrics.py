"""Losses and metrics as objects: what a task family's targets are trained with and scored by.

A ``Loss`` is a per-task function (outputs, targets) -> (tasks,) and the ``Metric`` its tasks are scored by.
A ``Metric`` has a name, a direction (higher or lower is better: checkpoint selection), how each task is
scored, how scores are pooled (per label, for the interval over test classes), and the row its results take
when the learner adapts its own way rather than by a number of steps. Evaluation, checkpoint selection and
the results tables read these objects, so a new kind of target (boxes, masks) brings its own loss and metric
and needs no branch there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from fastadapt.tasks.boxes import COCO_IOU_THRESHOLDS, average_precision
from fastadapt.tasks.cluttered_omniglot import SEGMENTATION_LOSS, localisation_hits, mask_iou
from fastadapt.tasks.detection import DETECTION_LOSS, found_boxes, ground_truth

PerTask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """A bf16 or fp16 tensor in fp32; fp32 and fp64 tensors (and integer ones) as they are."""
    return tensor.float() if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32 else tensor


@dataclass(frozen=True)
class Metric:
    """How a task is scored."""

    name: str
    higher_is_better: bool
    #: (outputs, targets) -> each task's score, (tasks,); None where the learner scores its tasks itself (returns)
    per_task: PerTask | None = None
    #: (outputs, targets) -> each task's score on the queries of each label, (tasks, labels); None: no labels
    per_label: PerTask | None = None
    #: the results row of a learner that adapts its own way, not by a number of gradient steps
    adapted_row: str = "adapted"
    #: metrics evaluation reports beside this one, on the same outputs, each in a row of its own (its
    #: ``adapted_row``); a learner's ``score_tasks`` returns their scores under their names
    companions: tuple["Metric", ...] = ()

    def scores(self, outputs: Any, targets: Any) -> dict[str | None, torch.Tensor]:
        """Each task's score (under None) and each companion's (under its name), as ``score_tasks`` returns them."""
        return {None: self.per_task(outputs, targets),
                **{companion.name: companion.per_task(outputs, targets) for companion in self.companions}}


@dataclass(frozen=True)
class Loss:
    """A training loss: its name (``tasks.loss``), its per-task function, and the metric its tasks are scored by."""

    name: str
    per_task: PerTask
    metric: Metric


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    outputs = at_least_fp32(outputs)
    if outputs.shape != targets.shape:
        raise ValueError(f"mse loss: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ")
    return ((outputs - targets) ** 2).flatten(1).mean(1)


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    outputs = at_least_fp32(outputs)
    if outputs.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy loss: outputs {tuple(outputs.shape)} must be targets {tuple(targets.shape)} + (classes,)"
        )
    losses = F.cross_entropy(outputs.flatten(0, -2), targets.flatten(), reduction="none")
    return losses.view(targets.shape).flatten(1).mean(1)


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(-1) == targets).float().flatten(1).mean(1)


def per_label_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Accuracy on the queries of each label: outputs (tasks, queries, n_way), targets (tasks, queries) ->
    (tasks, n_way); every label must have queries."""
    correct = (outputs.argmax(-1) == targets).double()
    one_hot = F.one_hot(targets, outputs.shape[-1]).double()
    return (correct.unsqueeze(-1) * one_hot).sum(1) / one_hot.sum(1)


def _mask_guess(outputs: torch.Tensor) -> torch.Tensor:
    """Segmentation outputs are mask logits (tasks, H, W): the paper's foreground probability above 0.3."""
    return at_least_fp32(outputs) > MASK_LOGIT_THRESHOLD


def _mask_bce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    outputs = at_least_fp32(outputs)
    if outputs.shape != targets.shape:
        raise ValueError(f"segmentation loss: mask logits {tuple(outputs.shape)} and masks {tuple(targets.shape)} "
                         "differ")
    return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), reduction="none").flatten(1).mean(1)


def _mask_iou(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return mask_iou(_mask_guess(outputs), targets)


def _localisation(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return localisation_hits(_mask_guess(outputs), targets)


def _episode_ap(thresholds) -> PerTask:
    """Each episode's AP over its canvases and classes at the IoU ``thresholds``: outputs (E, Q, D, 6) are the
    detections (box, score, class; class -1: padding), targets (E, Q, M, 5) the instances (box, class)."""

    def per_task(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.tensor([average_precision(found, truth, thresholds) for found, truth in
                             zip(found_boxes(outputs), ground_truth(targets))], dtype=torch.float64)

    return per_task


def _detector_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    raise ValueError("a detection method trains with the loss of its own head (meta_loss); detections have none")


#: The paper's threshold on the foreground probability (0.3), as a logit.
MASK_LOGIT_THRESHOLD = math.log(0.3 / 0.7)
ACCURACY = Metric("accuracy", higher_is_better=True, per_task=_accuracy, per_label=per_label_accuracy)
MSE = Metric("mse", higher_is_better=False, per_task=_mse)
#: An RL task's mean return over its trajectories (the learner rolls them out: ``evaluate_returns``).
RETURN = Metric("return", higher_is_better=True, adapted_row="return per trial")
#: One-shot segmentation (Michaelis et al. 2018): per-canvas mask IoU, and the share of canvases whose predicted
#: mask's centre of mass is within 5 pixels of the target's (``tasks.cluttered_omniglot``).
LOCALISATION = Metric("localisation", higher_is_better=True, per_task=_localisation,
                      adapted_row="localisation (centre within 5 px)")
MASK_IOU = Metric("mask_iou", higher_is_better=True, per_task=_mask_iou, adapted_row="mask IoU (threshold 0.3)",
                  companions=(LOCALISATION,))
#: K-shot detection (``tasks.detection``): AP at IoU 0.5 per episode (its canvases pooled, the classes that
#: appear in it averaged), COCO's AP (IoU 0.50:0.95) beside it.
COCO_AP = Metric("coco_ap", higher_is_better=True, per_task=_episode_ap(COCO_IOU_THRESHOLDS),
                 adapted_row="AP (COCO, IoU 0.50:0.95)")
AP50 = Metric("ap50", higher_is_better=True, per_task=_episode_ap((0.5,)), adapted_row="AP50",
              companions=(COCO_AP,))

LOSSES: dict[str, Loss] = {loss.name: loss for loss in (Loss("mse", _mse, MSE),
                                                          Loss("cross_entropy", _cross_entropy, ACCURACY),
                                                          Loss(SEGMENTATION_LOSS, _mask_bce, MASK_IOU),
                                                          Loss(DETECTION_LOSS, _detector_loss, AP50))}


def loss_named(name: str) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {tuple(LOSSES)}")
    return LOSSES[name]
