"""Box IoU, NMS and AP (tasks/boxes.py): hand cases, edge cases, and AP against pycocotools on random cases."""
import contextlib
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fastadapt.tasks.boxes import Detections, GroundTruth, average_precision, box_iou, nms

AP50 = (0.5,)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def detections(boxes, scores, classes=None):
    return Detections(t(boxes), torch.tensor(scores, dtype=torch.float64),
                      torch.tensor(classes if classes is not None else [0] * len(scores), dtype=torch.long))


def truth(boxes, classes=None):
    return GroundTruth(t(boxes), torch.tensor(classes if classes is not None else [0] * len(boxes), dtype=torch.long))


# --- box IoU ---

def test_box_iou_by_hand():
    first = t([[0, 0, 2, 2], [0, 0, 2, 2], [10, 10, 1, 1]])
    second = t([[0, 0, 2, 2], [1, 0, 2, 2], [2, 0, 2, 2]])
    expected = torch.tensor([[1, 1 / 3, 0], [1, 1 / 3, 0], [0, 0, 0]], dtype=torch.float64)
    assert torch.equal(box_iou(first, second), expected)  # touching edges (third column): 0


def test_zero_area_boxes_have_iou_zero_even_with_themselves():
    boxes = t([[3, 3, 0, 5], [3, 3, 5, 0], [0, 0, 0, 0], [0, 0, 10, 10]])
    iou = box_iou(boxes, boxes)
    assert torch.equal(iou[:3], torch.zeros(3, 4, dtype=torch.float64)) and iou[3, 3] == 1
    assert torch.isfinite(iou).all()


def test_box_iou_broadcasts_batches_and_handles_empty_sets():
    first, second = torch.rand(5, 1, 3, 4) * 10, torch.rand(1, 2, 4, 4) * 10
    iou = box_iou(first, second)
    assert iou.shape == (5, 2, 3, 4)
    assert torch.allclose(iou[4, 1], box_iou(first[4, 0], second[0, 1]))
    assert box_iou(t([]), t([[0, 0, 1, 1]])).shape == (0, 1)
    assert box_iou(t([[0, 0, 1, 1]]), t([])).shape == (1, 0)
    with pytest.raises(ValueError, match="left, top, width, height"):
        box_iou(torch.zeros(2, 3), torch.zeros(2, 4))


integer_box = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 8), st.integers(0, 8))


@settings(max_examples=200, deadline=None)
@given(st.lists(integer_box, min_size=1, max_size=4), st.lists(integer_box, min_size=1, max_size=4))
def test_box_iou_equals_counting_pixels(first, second):
    def raster(box):
        image = np.zeros((20, 20), dtype=bool)
        image[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = True
        return image

    iou = box_iou(t(first), t(second))
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            union = (raster(a) | raster(b)).sum()
            expected = (raster(a) & raster(b)).sum() / union if union else 0.0
            assert iou[i, j].item() == pytest.approx(expected, abs=1e-12)
            assert iou[i, j] == box_iou(t([b]), t([a]))[0, 0]


# --- NMS ---

def test_nms_by_hand():
    boxes = t([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 5, 5], [0, 1, 10, 10]])
    scores = torch.tensor([0.5, 0.9, 0.3, 0.1], dtype=torch.float64)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 2, 3]
    # per class: overlapping boxes of different classes do not suppress each other
    assert nms(boxes, scores, 0.5, classes=torch.tensor([0, 1, 0, 0])).tolist() == [1, 0, 2]


def test_nms_removes_only_above_the_threshold_and_breaks_ties_by_index():
    boxes = t([[0, 0, 2, 2], [1, 0, 2, 2], [0, 0, 2, 2]])  # IoU of the first two: exactly 1/3
    scores = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    assert nms(boxes, scores, 1 / 3).tolist() == [0, 1]  # the identical third box goes, the 1/3 one stays
    assert nms(boxes, scores, 0.3).tolist() == [0]
    assert nms(boxes[[2, 1, 0]], scores, 0.3).tolist() == [0]


def test_nms_edge_cases():
    assert nms(t([]), torch.zeros(0, dtype=torch.float64), 0.5).tolist() == []
    zero_area = t([[0, 0, 0, 4], [0, 0, 0, 4], [0, 0, 4, 4]])
    assert nms(zero_area, torch.tensor([3.0, 2.0, 1.0]), 0.0).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="finite"):
        nms(t([[0, 0, 1, 1]]), torch.tensor([float("nan")]), 0.5)
    with pytest.raises(ValueError, match="one per box"):
        nms(t([[0, 0, 1, 1]]), torch.tensor([1.0]), 0.5, classes=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="scores"):
        nms(t([[0, 0, 1, 1]]), torch.tensor([1.0, 2.0]), 0.5)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(integer_box, st.integers(0, 5), st.integers(0, 2)), max_size=12),
       st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_nms_keeps_a_set_without_overlaps_that_explains_every_removed_box(rows, threshold):
    boxes = t([row[0] for row in rows])
    scores = torch.tensor([float(row[1]) for row in rows], dtype=torch.float64)
    classes = torch.tensor([row[2] for row in rows], dtype=torch.long)
    kept = nms(boxes, scores, threshold, classes).tolist()
    iou = box_iou(boxes, boxes)
    same = classes[:, None] == classes[None, :]
    assert all(scores[a] >= scores[b] for a, b in zip(kept, kept[1:]))
    assert not any(iou[a, b] > threshold and same[a, b] for a in kept for b in kept if a != b)
    for removed in set(range(len(rows))) - set(kept):  # removed by a kept box ranked before it
        assert any(iou[k, removed] > threshold and same[k, removed] and
                   (scores[k] > scores[removed] or (scores[k] == scores[removed] and k < removed)) for k in kept)


# --- AP by hand ---

def test_ap_by_hand():
    gt = [truth([[0, 0, 10, 10]])]
    assert average_precision([detections([[0, 0, 10, 10]], [0.9])], gt) == pytest.approx(1)
    assert average_precision([detections([], [])], gt) == 0
    # a false positive ranked after the hit costs nothing; ranked before it halves the precision
    assert average_precision([detections([[0, 0, 10, 10], [50, 50, 5, 5]], [0.9, 0.1])], gt) == pytest.approx(1)
    assert average_precision([detections([[0, 0, 10, 10], [50, 50, 5, 5]], [0.1, 0.9])], gt) == pytest.approx(0.5)
    # one of two objects found: precision 1 at recall 0, 0.01, ..., 0.5, nothing beyond
    two = [truth([[0, 0, 10, 10], [40, 40, 10, 10]])]
    assert average_precision([detections([[0, 0, 10, 10]], [0.9])], two) == pytest.approx(51 / 101)
    # a second detection of a found object is a false positive
    assert average_precision([detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])], two, AP50) == \
        pytest.approx(51 / 101)


def test_coco_ap_averages_the_ten_iou_thresholds():
    gt = [truth([[0, 0, 100, 100]])]
    found = [detections([[0, 0, 72, 100]], [1.0])]  # IoU 0.72: a hit at 0.50, 0.55, ..., 0.70, a miss above
    assert average_precision(found, gt, AP50) == pytest.approx(1)
    assert average_precision(found, gt) == pytest.approx(0.5)
    assert average_precision([detections([[0, 0, 50, 100]], [1.0])], gt) == pytest.approx(0.1)  # IoU exactly 0.5


def test_ap_pools_images_and_averages_classes():
    truths = [truth([[0, 0, 10, 10]], [0]), truth([[0, 0, 10, 10]], [1]), truth([], [])]
    found = [detections([[0, 0, 10, 10]], [0.9], [0]), detections([], [], []),
             detections([[0, 0, 10, 10]], [0.95], [0])]  # class 0: the image without objects ranks first
    assert average_precision(found, truths, AP50) == pytest.approx((0.5 + 0) / 2)
    # detections of a class no image has do not count; no true box at all: NaN
    extra = [detections([[0, 0, 10, 10], [5, 5, 3, 3]], [0.9, 1.0], [0, 7]), detections([[0, 0, 10, 10]], [0.5], [1]),
             detections([], [], [])]
    assert average_precision(extra, truths) == pytest.approx(1)
    assert np.isnan(average_precision([detections([[0, 0, 1, 1]], [1.0])], [truth([])]))


def test_ap_edge_cases():
    gt = [truth([[0, 0, 10, 10]])]
    # zero-area detection on the object, zero-area object: never a match
    assert average_precision([detections([[0, 0, 0, 10]], [1.0])], gt) == 0
    assert average_precision([detections([[0, 0, 0, 10]], [1.0])], [truth([[0, 0, 0, 10]])]) == 0
    # only the 100 highest-scored detections of an image and class count
    misses = [[50, 50, 5, 5]] * 100
    assert average_precision([detections(misses + [[0, 0, 10, 10]], [1.0] * 100 + [0.5])], gt) == 0
    assert average_precision([detections(misses + [[0, 0, 10, 10]], [1.0] * 100 + [0.5])], gt,
                             max_detections=101) == pytest.approx(1 / 101)
    # equal scores keep the given order (first the miss, then the hit) as COCO's stable sort does
    assert average_precision([detections([[50, 50, 5, 5], [0, 0, 10, 10]], [1.0, 1.0])], gt) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one each"):
        average_precision([detections([], [])], gt * 2)
    with pytest.raises(ValueError, match="finite"):
        average_precision([detections([[0, 0, 1, 1]], [float("inf")])], gt)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        average_precision([Detections(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))], gt)


# --- AP against pycocotools ---

def coco_ap(found, truths):
    """pycocotools' AP (0.50:0.95) and AP50 for the same images: -1 where there is nothing to score."""
    categories = sorted({int(c) for image in truths for c in image.classes} |
                        {int(c) for image in found for c in image.classes})
    ground = COCO()
    ground.dataset = {
        "images": [{"id": i} for i in range(len(truths))],
        "categories": [{"id": c + 1} for c in categories],
        "annotations": [{"id": len(truths) * j + i + 1, "image_id": i, "category_id": int(c) + 1,
                         "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0}
                        for i, image in enumerate(truths)
                        for j, (box, c) in enumerate(zip(image.boxes, image.classes))]}
    results = [{"image_id": i, "category_id": int(c) + 1, "bbox": box.tolist(), "score": float(s)}
               for i, image in enumerate(found) for box, s, c in zip(image.boxes, image.scores, image.classes)]
    with contextlib.redirect_stdout(io.StringIO()):
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[0], evaluation.stats[1]


def test_a_detection_between_two_objects_takes_the_later_one_as_pycocotools_does():
    # IoU 0.6 with both objects: matching the second leaves the exact copy of it, ranked next, a false positive
    truths = [truth([[0, 0, 10, 10], [5, 0, 10, 10]])]
    found = [detections([[2.5, 0, 10, 10], [5, 0, 10, 10]], [0.9, 0.8])]
    assert average_precision(found, truths, AP50) == pytest.approx(51 / 101) == coco_ap(found, truths)[1]


def random_case(rng):
    """A few images with 0-5 objects of 1-3 classes (some of zero area) and detections near and away from
    them, scores drawn from few values so that ties happen."""
    classes = int(rng.integers(1, 4))
    truths, found = [], []
    for _ in range(int(rng.integers(1, 6))):
        n = int(rng.integers(0, 6))
        boxes = np.column_stack([rng.uniform(0, 80, (n, 2)), rng.uniform(2, 30, (n, 2))])
        boxes[rng.random(n) < 0.05, 2] = 0
        labels = rng.integers(0, classes, n)
        near = boxes[rng.integers(0, n, int(rng.integers(0, 8)))] if n else np.zeros((0, 4))
        near = near + rng.normal(0, 3, near.shape) * [1, 1, 0.5, 0.5]
        away = np.column_stack([rng.uniform(0, 80, (m := int(rng.integers(0, 4)), 2)), rng.uniform(0, 30, (m, 2))])
        det_boxes = np.concatenate([near, away])
        det_boxes[:, 2:] = np.abs(det_boxes[:, 2:])
        det_labels = np.concatenate([labels[rng.integers(0, n, len(near))] if n else [], rng.integers(0, classes, m)])
        flip = rng.random(len(det_labels)) < 0.15
        det_labels[flip] = rng.integers(0, classes, flip.sum())
        scores = rng.integers(1, 6, len(det_boxes)) / 5 if rng.random() < 0.5 else rng.random(len(det_boxes))
        truths.append(GroundTruth(torch.from_numpy(boxes), torch.from_numpy(labels)))
        found.append(Detections(torch.from_numpy(det_boxes), torch.from_numpy(scores),
                                torch.from_numpy(det_labels.astype(np.int64))))
    return found, truths


def test_ap_equals_pycocotools_on_random_cases():
    rng = np.random.default_rng(2026)
    compared = 0
    for _ in range(300):
        found, truths = random_case(rng)
        if sum(len(image.scores) for image in found) == 0:
            continue  # pycocotools' loadRes cannot take an empty result list
        coco, coco50 = coco_ap(found, truths)
        ours, ours50 = average_precision(found, truths), average_precision(found, truths, AP50)
        if coco == -1:
            assert np.isnan(ours) and np.isnan(ours50)
        else:
            assert ours == pytest.approx(coco, abs=1e-12) and ours50 == pytest.approx(coco50, abs=1e-12)
            compared += 0 < coco < 1
    assert compared > 150  # most cases are neither trivial nor empty
