"""The default score a detection needs (a learner's ``min_score``), chosen on validation canvases: every
method's detections on the first N val-one-shot canvases (job 4, the one `fastadapt eval --split val` scores),
each searched for its own reference as `fastadapt detect` searches (all peaks, NMS at IoU 0.5); for each
threshold the precision and recall of the boxes at IoU >= 0.5 with the canvas's one target, and their F1; AP50
over all the canvases (the benchmark has one target a canvas).

    python benchmarks/detect_threshold.py --data-root /work/shared/data/omniglot --canvases 300 --run runs/tm
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from fastadapt.datasets.cluttered_omniglot import generate_job, load_glyphs
from fastadapt.detector import FewShotDetector
from fastadapt.tasks.boxes import Detections, GroundTruth, average_precision, box_iou

THRESHOLDS = np.round(np.arange(0.3, 1.0001, 0.05), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--canvases", type=int, default=300)
    parser.add_argument("--characters", type=int, default=4)
    parser.add_argument("--run", required=True, help="a segmentation run directory")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    job = generate_job(load_glyphs("val-one-shot", args.data_root), args.characters, "val-one-shot", 4,
                       length=args.canvases)
    detector = FewShotDetector.from_run(args.run, min_score=float(THRESHOLDS[0]))
    found, truths = [], []
    for reference, canvas, box in zip(job.references, job.canvases, job.boxes):
        result = detector.fit([reference]).detect([canvas])[0]
        found.append(Detections(torch.from_numpy(result.boxes), torch.from_numpy(result.scores),
                                torch.zeros(len(result), dtype=torch.long)))
        truths.append(GroundTruth(torch.tensor(box[None], dtype=torch.float64), torch.zeros(1, dtype=torch.long)))
    ap50 = average_precision(found, truths, iou_thresholds=(0.5,))
    print(f"{detector.config.method.name}, {args.canvases} val-one-shot canvases (job 4) at {args.characters} "
          f"characters: AP50 {ap50:.3f} (detections scored >= {THRESHOLDS[0]})")
    print(f"{'threshold':>9} {'boxes/canvas':>12} {'precision':>9} {'recall':>7} {'F1':>6}")
    for threshold in THRESHOLDS:
        boxes = hits = recalled = 0
        for detections, truth in zip(found, truths):
            keep = detections.scores >= threshold
            iou = box_iou(detections.boxes[keep], truth.boxes)[:, 0] if keep.any() else torch.zeros(0)
            boxes += int(keep.sum())
            hits += int((iou >= 0.5).sum().clamp(max=1))  # one target: a second box on it is a false positive
            recalled += int((iou >= 0.5).any())
        precision, recall = hits / max(boxes, 1), recalled / len(found)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        print(f"{threshold:9.2f} {boxes / len(found):12.2f} {precision:9.3f} {recall:7.3f} {f1:6.3f}", flush=True)


if __name__ == "__main__":
    main()
