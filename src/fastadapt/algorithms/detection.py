"""What the K-shot detection methods share: the interface of a learner that finds every instance of a few
classes, each shown by K references, on canvases (``tasks.detection.DetectionBatch``).

A ``DetectionLearner`` answers for a batch of episodes at once: ``adapt(references)`` is what it takes from each
episode's references (E, N, K, 3, 32, 32) (prototypes, templates), ``detect(adapted, canvases)`` its detections
on the episode's canvases (E, Q, 3, 96, 96), padded to (E, Q, D, 6): box (left, top, width, height), score and
class (0..N-1; -1: padding). Its episodes are scored by AP50 (COCO's AP beside it) over each episode's canvases.
The methods turn candidates into detections the same way, by NMS per class (``class_nms``); a method with a
score map per class takes its local maxima as candidates, each with the box predicted there (``peak_detections``).
"""
from __future__ import annotations

from typing import Any

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.segmentation import SegmentationLearner, peaks
from fastadapt.tasks.boxes import nms
from fastadapt.tasks.cluttered_omniglot import CANVAS_SHAPE, REFERENCE_SHAPE
from fastadapt.tasks.detection import DETECTION_LOSS, DetectionBatch

#: Peaks kept per class and canvas before NMS, and the IoU above which NMS removes a box of the same class.
PEAKS_PER_CLASS = 8
NMS_IOU = 0.5


class DetectionLearner(MetaLearner):
    """Base of the detection methods; subclasses implement ``adapt`` and ``detect``."""

    #: the score a match needs by default (``FewShotDetector``), as a segmentation learner's
    min_score = SegmentationLearner.min_score

    def __init__(self) -> None:
        super().__init__(DETECTION_LOSS)

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> Any:
        raise NotImplementedError

    def detect(self, adapted: Any, canvases: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def find(self, references: torch.Tensor, canvases: torch.Tensor) -> torch.Tensor:
        """Detections (E, Q, D, 6) of each episode's classes on its canvases, the inputs checked first."""
        check_detection_inputs(references, canvases)
        return self.detect(self.adapt(references), canvases)

    def score_tasks(self, batch: DetectionBatch, steps: list[int | None], by_label: bool = False
                    ) -> dict[int | str | None, torch.Tensor]:
        """Each episode's AP50 (under None) and COCO AP (under its name)."""
        if by_label:
            raise ValueError("a detection episode is scored over all its classes at once, not per label")
        if list(steps) != [None]:
            raise ValueError(f"{type(self).__name__} adapts to the references its own way, not by a number of "
                             f"gradient steps; got steps={steps}")
        found = self.find(batch.references, batch.canvases)
        return self.metric.scores(found, batch.targets)


def check_detection_inputs(references: torch.Tensor, canvases: torch.Tensor) -> None:
    """References (E, N, K, 3, 32, 32) and canvases (E, Q, 3, 96, 96), as many episodes of each; else a
    ValueError saying which is wrong."""
    for name, tensor, shape, dims in (("reference", references, REFERENCE_SHAPE, "episodes, classes, shots"),
                                      ("canvas", canvases, CANVAS_SHAPE, "episodes, canvases")):
        if tensor.dim() != len(dims.split(", ")) + len(shape) or tuple(tensor.shape[-3:]) != shape:
            raise ValueError(f"a {name} must be {shape[1]}x{shape[2]} pixels with {shape[0]} channels (RGB), as "
                             f"({dims}, {', '.join(map(str, shape))}); got {tuple(tensor.shape)}")
    if references.shape[0] != canvases.shape[0]:
        raise ValueError(f"references of {references.shape[0]} episodes for canvases of {canvases.shape[0]}")


def peak_detections(scores: torch.Tensor, boxes: torch.Tensor, count: int = PEAKS_PER_CLASS,
                    iou: float = NMS_IOU) -> torch.Tensor:
    """Detections from per-class score maps ``scores`` (Q, N, h, w) (-inf: nothing there) and the box predicted
    at each cell ``boxes`` (Q, N, h, w, 4): per canvas and class its ``count`` highest local maxima (3x3), then
    ``class_nms``."""
    values, index = peaks(scores, count)  # (Q, N, count)
    chosen = boxes.flatten(2, 3).gather(2, index[..., None].expand(-1, -1, -1, 4))
    return class_nms(values, chosen, iou)


def class_nms(scores: torch.Tensor, boxes: torch.Tensor, iou: float = NMS_IOU) -> torch.Tensor:
    """Candidate detections of each class on each canvas, scores (Q, N, P) (-inf: none) and boxes (Q, N, P, 4),
    after NMS per class: (Q, N x P, 6) as box, score, class, padded with class -1, highest score first."""
    canvases, classes, count = scores.shape
    label = torch.arange(classes, device=scores.device)[:, None].expand(classes, count).flatten()
    out = torch.zeros(canvases, classes * count, 6, dtype=scores.dtype, device=scores.device)
    out[..., 5] = -1
    for q in range(canvases):
        value, box = scores[q].flatten(), boxes[q].flatten(0, 1).to(scores.dtype)
        real = torch.isfinite(value)
        value, box, cls = value[real], box[real], label[real]
        kept = nms(box, value, iou, cls)
        out[q, :len(kept)] = torch.cat([box[kept], value[kept, None], cls[kept, None].to(box.dtype)], 1)
    return out
