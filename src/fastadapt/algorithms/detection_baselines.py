"""Template matching for K-shot detection, with nothing to train (the baseline of ``tasks.detection``).

Each of a class's K references is matched as the one-shot segmentation baseline matches its reference
(``segmentation_baselines.TemplateMatching.find``: normalised cross-correlation of the reference's ink over the
canvas's ink for 125 transforms, each axis scaled by 0.5-2 and rotated by -20 to 20 degrees; the local maxima of
the best template's NCC over the shifts, each as that template's box, scored by its NCC). The class's candidates
are its K references' peaks together, and per-class NMS keeps the best of overlapping ones
(``detection.class_nms``). Cost: one NCC of 125 templates per (canvas, reference) pair, N x K x Q per episode.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from fastadapt.algorithms.base import check_no_steps
from fastadapt.algorithms.detection import PEAKS_PER_CLASS, DetectionLearner, class_nms
from fastadapt.algorithms.segmentation_baselines import TemplateMatching
from fastadapt.algorithms.spec import MethodSpec


class TemplateDetector(DetectionLearner):
    """Multi-box NCC template matching (see the module's docstring)."""

    min_score = TemplateMatching.min_score

    def __init__(self) -> None:
        super().__init__()
        self.matcher = TemplateMatching()

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> torch.Tensor:
        check_no_steps(steps, "template-detector")
        return references

    def detect(self, adapted: torch.Tensor, canvases: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.detect_episode(references, episode) for references, episode in zip(adapted, canvases)])

    def detect_episode(self, references: torch.Tensor, canvases: torch.Tensor) -> torch.Tensor:
        """Detections (Q, N x K x peaks, 6) of one episode's classes (references (N, K, 3, 32, 32)) on its canvases."""
        classes, shots = references.shape[:2]
        found = self.matcher.find(self.matcher.prepare(references.flatten(0, 1)), canvases, PEAKS_PER_CLASS,
                                  -math.inf)  # boxes (N K, Q, peaks, 4), scores (N K, Q, peaks)
        count = len(canvases)
        scores = found.scores.view(classes, shots, count, -1).permute(2, 0, 1, 3).flatten(2)
        boxes = found.boxes.view(classes, shots, count, -1, 4).permute(2, 0, 1, 3, 4).flatten(2, 3)
        return class_nms(scores, boxes)


SPECS = (MethodSpec("template-detector", TemplateDetector, lambda context: TemplateDetector(), detection=True),)
