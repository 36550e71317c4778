"""What the segmentation methods share: the interface of a learner that finds a reference's object on a canvas.

A segmentation task (``tasks.cluttered_omniglot.SegmentationBatch``) is a canvas, a reference, and the answer,
the mask (and box) of the reference's object on the canvas. A ``SegmentationLearner`` answers for a whole batch
at once: ``adapt(references)`` is what it takes from each reference (an embedding, conditioning weights, a bank
of transformed templates), ``predict(adapted, canvases)`` the mask logits (tasks, height, width); a probability
above 0.3 is the paper's foreground. Its tasks are scored by mask IoU, with localisation beside it (the metric's
companion), from one prediction.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.metrics import MASK_LOGIT_THRESHOLD, at_least_fp32
from fastadapt.tasks.cluttered_omniglot import CANVAS_SHAPE, REFERENCE_SHAPE, SEGMENTATION_LOSS, SegmentationBatch


class Detection(NamedTuple):
    """Boxes (tasks, 4) as (left, top, width, height) in canvas pixels, and their scores (tasks,)."""

    boxes: torch.Tensor
    scores: torch.Tensor


class Found(NamedTuple):
    """Every object of each reference found on each canvas (``SegmentationLearner.find``): boxes
    (references, canvases, count, 4) as (left, top, width, height), their scores (references, canvases, count),
    -inf past the last one found, and masks (references, canvases, H, W) bool: the predicted foreground, kept
    inside the boxes scored at least ``min_score``."""

    boxes: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor


class SegmentationLearner(MetaLearner):
    """Base of the segmentation methods; subclasses implement ``adapt`` and ``predict``, and ``detect`` where
    they find boxes otherwise than as the predicted mask's."""

    #: the score a match needs by default (``FewShotDetector``), on the scale of the method's score: 0.3, the
    #: probability the benchmark's masks are read at (not chosen: no trained run finds more than the ink yet)
    min_score = 0.3

    def __init__(self) -> None:
        super().__init__(SEGMENTATION_LOSS)

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> Any:
        raise NotImplementedError

    def predict(self, adapted: Any, canvases: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def segment(self, references: torch.Tensor, canvases: torch.Tensor) -> torch.Tensor:
        """Mask logits (tasks, H, W) of each reference's object on its canvas, the inputs checked first."""
        check_segmentation_inputs(references, canvases)
        return self.predict(self.adapt(references), canvases)

    def detect(self, references: torch.Tensor, canvases: torch.Tensor) -> Detection:
        """Each reference's object as a box with a score: here the box of the predicted mask (empty: all zero),
        scored by the highest foreground probability in it."""
        logits = self.segment(references, canvases)
        masks = at_least_fp32(logits) > MASK_LOGIT_THRESHOLD
        return Detection(mask_box(masks), torch.sigmoid(logits.flatten(1).amax(1)))

    def prepare(self, references: torch.Tensor) -> Any:
        """What ``find`` takes from references (tasks, 3, 32, 32) that are matched against many canvases; here
        the references themselves (each pair is adapted in ``find``). A method that reads a reference once
        (templates, features) does so here."""
        return references

    def find(self, prepared: Any, canvases: torch.Tensor, count: int, min_score: float) -> Found:
        """Up to ``count`` objects of each prepared reference on each canvas (every pair). Here one: the box of
        the predicted mask, scored as ``detect`` scores it; methods with a map of scores return its peaks."""
        references = prepared
        pairs = (references.repeat_interleave(len(canvases), 0), canvases.repeat(len(references), 1, 1, 1))
        logits = self.segment(*pairs)
        masks = at_least_fp32(logits) > MASK_LOGIT_THRESHOLD
        boxes = mask_box(masks).to(logits.dtype)
        scores = torch.sigmoid(at_least_fp32(logits).flatten(1).amax(1))
        scores = torch.where(masks.flatten(1).any(1), scores, -math.inf)
        shape = (len(references), len(canvases))
        boxes = F.pad(boxes[:, None], (0, 0, 0, count - 1)).view(*shape, count, 4)
        scores = F.pad(scores[:, None], (0, count - 1), value=-math.inf).view(*shape, count)
        masks = masks.view(*shape, *masks.shape[-2:])
        return Found(boxes, scores, masks & inside_boxes(boxes, scores >= min_score, masks.shape[-2:]))

    def score_tasks(self, batch: SegmentationBatch, steps: list[int | None], by_label: bool = False
                    ) -> dict[int | str | None, torch.Tensor]:
        """Each canvas's mask IoU (under None) and its companions' scores (localisation, under its name)."""
        if by_label:
            raise ValueError("a segmentation task has no labels to score separately")
        if list(steps) != [None]:
            raise ValueError(f"{type(self).__name__} adapts to a reference its own way, not by a number of "
                             f"gradient steps; got steps={steps}")
        logits = self.segment(batch.references, batch.canvases)
        return self.metric.scores(logits, batch.masks)


def check_segmentation_inputs(references: torch.Tensor, canvases: torch.Tensor) -> None:
    """References (tasks, 3, 32, 32) and canvases (tasks, 3, 96, 96), as many of each; else a ValueError saying
    which is wrong."""
    for name, tensor, shape in (("reference", references, REFERENCE_SHAPE), ("canvas", canvases, CANVAS_SHAPE)):
        if tensor.dim() != 4 or tuple(tensor.shape[1:]) != shape:
            raise ValueError(f"a {name} must be {shape[1]}x{shape[2]} pixels with {shape[0]} channels (RGB), as "
                             f"(tasks, {', '.join(map(str, shape))}); got {tuple(tensor.shape)}")
    if references.shape[0] != canvases.shape[0]:
        raise ValueError(f"{references.shape[0]} references for {canvases.shape[0]} canvases: one each")


def mask_box(masks: torch.Tensor) -> torch.Tensor:
    """The bounding box (left, top, width, height) of each mask (tasks, H, W) bool; zeros for an empty mask."""
    rows, cols = masks.any(2), masks.any(1)
    index = torch.arange(masks.shape[-1], device=masks.device)
    boxes = []
    for present in (cols, rows):
        first = torch.where(present, index[:present.shape[1]], present.shape[1]).amin(1)
        last = torch.where(present, index[:present.shape[1]], -1).amax(1)
        boxes.append((first, last - first + 1))
    (left, width), (top, height) = boxes
    box = torch.stack([left, top, width, height], 1)
    return torch.where(masks.flatten(1).any(1)[:, None], box, 0)


def peaks(maps: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` highest local maxima (none higher among its 8 neighbours) of each map (..., H, W): their
    values (..., count), highest first, -inf past the last maximum, and their flat indices (..., count)."""
    height, width = maps.shape[-2:]
    flat = maps.reshape(-1, 1, height, width)
    pooled = F.max_pool2d(flat, 3, 1, 1)
    local = torch.where(flat == pooled, flat, -math.inf).flatten(1)
    values, index = local.topk(min(count, height * width), 1)
    if count > height * width:
        values = F.pad(values, (0, count - height * width), value=-math.inf)
        index = F.pad(index, (0, count - height * width))
    return values.view(*maps.shape[:-2], count), index.view(*maps.shape[:-2], count)


def inside_boxes(boxes: torch.Tensor, keep: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The pixels (..., H, W) inside any of the boxes (..., count, 4) (left, top, width, height) that ``keep``
    (..., count) says to keep: a pixel is inside when its centre is."""
    rows = torch.arange(shape[0], device=boxes.device, dtype=boxes.dtype) + 0.5
    cols = torch.arange(shape[1], device=boxes.device, dtype=boxes.dtype) + 0.5
    left, top, width, height = boxes.unbind(-1)
    in_rows = (rows >= top[..., None]) & (rows < (top + height)[..., None])  # (..., count, H)
    in_cols = (cols >= left[..., None]) & (cols < (left + width)[..., None])
    return ((in_rows[..., :, None] & in_cols[..., None, :]) & keep[..., None, None]).any(-3)


def ink(images: torch.Tensor) -> torch.Tensor:
    """Where an RGB image (tasks, 3, H, W) is drawn on (any channel above 0): (tasks, H, W) bool. A character's
    colour is random and the reference's differs from the target's, so its shape is what identifies it."""
    return images.amax(1) > 0
