"""Boxes: what a detection answer is and how it is scored (box IoU, greedy NMS, AP50 and COCO-style AP).

A box is (left, top, width, height) in pixels, continuous coordinates, as COCO writes ``bbox``: its area is
width x height, and a box of zero width or height has area 0 and IoU 0 with every box (itself included), so
it never matches a true box and never suppresses another. AP follows the COCO evaluation (pycocotools'
``COCOeval`` with ``iouType="bbox"``, area range "all", at most 100 detections per image and class) exactly,
so its figures can be compared with published COCO-style ones; the tests check it against pycocotools.
Written in torch (IoU, NMS: used inside models) and numpy (AP: bookkeeping over a whole evaluation set),
without torchvision or pycocotools, which the library does not depend on.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

#: COCO's IoU thresholds 0.50, 0.55, ..., 0.95 (the same floats as pycocotools', so ties break alike)
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: the recall points COCO reads interpolated precision at: 0, 0.01, ..., 1
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1, endpoint=True)
#: COCO's cap on the detections of one image and class that AP counts (the highest scored)
COCO_MAX_DETECTIONS = 100


class Detections(NamedTuple):
    """What a detector found on one image: boxes (n, 4) as (left, top, width, height), scores (n,) and
    classes (n,) integer."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


class GroundTruth(NamedTuple):
    """The true objects of one image: boxes (m, 4) as (left, top, width, height) and classes (m,) integer."""

    boxes: torch.Tensor
    classes: torch.Tensor


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``first`` (..., n, 4) with every box of ``second`` (..., m, 4), both as
    (left, top, width, height) with batch dimensions that broadcast: (..., n, m). A pair whose
    intersection is empty (zero-area boxes included) has IoU 0."""
    if first.shape[-1] != 4 or second.shape[-1] != 4:
        raise ValueError(f"boxes must be (..., 4) as (left, top, width, height); got {tuple(first.shape)} "
                         f"and {tuple(second.shape)}")
    a, b = first[..., :, None, :], second[..., None, :, :]
    width = (torch.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]))
    height = (torch.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]))
    intersection = width.clamp(min=0) * height.clamp(min=0)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - intersection
    # an empty intersection gives 0 whatever the union (0/0 for two zero-area boxes), as pycocotools does
    return torch.where(intersection > 0, intersection / torch.where(intersection > 0, union, 1), 0)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, classes: torch.Tensor | None = None
        ) -> torch.Tensor:
    """Greedy non-maximum suppression: the indices (k,) of the boxes (n, 4) kept, highest score first.
    Boxes are taken in order of score (equal scores: the lower index first); each one kept removes the
    later ones whose IoU with it is above ``iou_threshold``; with ``classes`` (n,), only those of its class."""
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms takes boxes (n, 4) and scores (n,); got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")
    if classes is not None and classes.shape != scores.shape:
        raise ValueError(f"nms: classes {tuple(classes.shape)} must be one per box, {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("nms: scores must be finite")
    order = torch.sort(scores, descending=True, stable=True).indices
    overlap = box_iou(boxes[order], boxes[order]) > iou_threshold
    if classes is not None:
        overlap &= classes[order][:, None] == classes[order][None, :]
    overlap = overlap.cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if not removed[i]:
            kept.append(i)
            removed |= overlap[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def average_precision(detections: Sequence[Detections], truths: Sequence[GroundTruth],
                      iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
                      max_detections: int = COCO_MAX_DETECTIONS) -> float:
    """COCO-style AP of ``detections`` against ``truths`` (one of each per image): the mean over IoU
    thresholds and over the classes that have a true box of the 101-point interpolated precision.

    Per image and class, the ``max_detections`` highest-scored detections are matched in order of score, each to
    the unmatched true box of highest IoU at or above the threshold (equal IoUs: the later box, as COCO);
    the matches of all images, ranked by score, give the precision-recall curve. ``iou_thresholds=(0.5,)`` is
    AP50; the default is COCO's AP (0.50:0.95). NaN where no image has a true box."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections for {len(truths)} of ground truth: one each")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    images = [(_numpy(found, 3), _numpy(true, 2)) for found, true in zip(detections, truths)]
    classes = np.unique(np.concatenate([true_classes for _, (_, true_classes) in images]).astype(np.int64))
    precisions = []
    for cls in classes:
        matched, scores, positives = [], [], 0
        for (boxes, found_scores, found_classes), (true_boxes, true_classes) in images:
            true = true_boxes[true_classes == cls]
            positives += len(true)
            mine = found_classes == cls
            order = np.argsort(-found_scores[mine], kind="mergesort")[:max_detections]
            found, ranked = boxes[mine][order], found_scores[mine][order]
            matched.append(_match(found, true, thresholds))
            scores.append(ranked)
        ranking = np.argsort(-np.concatenate(scores), kind="mergesort")
        hits = np.concatenate(matched, axis=1)[:, ranking]
        precisions.append([_interpolated_precision(hit, positives) for hit in hits])
    return float(np.mean(precisions)) if precisions else float("nan")


def _numpy(answer: Detections | GroundTruth, fields: int) -> tuple[np.ndarray, ...]:
    """An image's detections or ground truth as float64 boxes (n, 4), float64 scores and int64 classes (n,)."""
    if len(answer) != fields:
        raise ValueError(f"expected {type(answer).__name__ if isinstance(answer, tuple) else 'a tuple'} with "
                         f"{fields} fields; got {len(answer)}")
    boxes, *rest = (torch.as_tensor(field).detach().cpu().double().numpy() for field in answer)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4 or any(field.shape != (len(boxes),) for field in rest):
        raise ValueError(f"boxes must be (n, 4) with one {'score and ' if fields == 3 else ''}class per box; "
                         f"got {boxes.shape}, {', '.join(str(field.shape) for field in rest)}")
    if fields == 3 and not np.isfinite(rest[0]).all():
        raise ValueError("detection scores must be finite")
    return (boxes, *rest[:-1], rest[-1].astype(np.int64))


def _match(found: np.ndarray, true: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Whether each detection (taken in the given order) matches a true box at each threshold: (thresholds, n)."""
    hits = np.zeros((len(thresholds), len(found)), dtype=bool)
    if len(found) == 0 or len(true) == 0:
        return hits
    iou = box_iou(torch.from_numpy(found), torch.from_numpy(true)).numpy()
    for t, threshold in enumerate(thresholds):
        taken = np.zeros(len(true), dtype=bool)
        least = min(threshold, 1 - 1e-10)
        for d in range(len(found)):
            candidates = np.where(taken, -np.inf, iou[d])
            best = candidates.max()
            if best >= least:
                g = np.flatnonzero(candidates == best)[-1]
                taken[g] = hits[t, d] = True
    return hits


def _interpolated_precision(hits: np.ndarray, positives: int) -> float:
    """The mean over COCO's 101 recall points of the precision from there on (0 past the last recall reached),
    for detections ranked by score, ``hits`` telling which are true positives."""
    if len(hits) == 0:
        return 0.0
    true_positives = np.cumsum(hits)
    false_positives = np.cumsum(~hits)
    recall = true_positives / positives
    precision = true_positives / (true_positives + false_positives + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    reached = points < len(hits)
    return float(np.where(reached, precision[np.minimum(points, len(hits) - 1)], 0).mean())
