"""`fastadapt detect` beyond Omniglot canvases: "here is one, find the rest" on photograph-like scenes.

    python benchmarks/detect_photos.py --run runs/tm --scenes 12

The protocol (fixed before it was run, run once): SCENES scenes of 800x600 pixels, each made with Pillow from
its seed: a background like a photograph's (a colour gradient, smooth blotches, pixel noise), 3 to 5 copies of
one target symbol and 3 to 5 distractor symbols (glyphs of Pillow's built-in font: letters, digits and signs,
the target's and the distractors' drawn at random sizes of 50 to 110 pixels, rotations of -20 to 20 degrees and
dark colours), blurred slightly and saved as JPEG (quality 85), as a camera would. The labels are the boxes of
the drawn glyphs' ink, known from the drawing. The example is a box around the first copy (`fit_boxes`); the
truth is the other copies; a detection overlapping the example's box (IoU >= 0.5) is dropped before scoring.
Scored: AP50 and COCO-style AP over the scenes (tasks/boxes.py), and the recall of the copies at IoU >= 0.5 by
the detector's default threshold with the boxes kept per scene. Nothing is chosen from these figures.
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fastadapt.detector import FewShotDetector
from fastadapt.tasks.boxes import Detections, GroundTruth, average_precision, box_iou

SYMBOLS = "AEFGKLMNPRSTWXYZ2345679&%#@$?"
SIZE = (800, 600)


def glyph(symbol: str, size: int, angle: float) -> np.ndarray:
    """The symbol's ink (h, w) bool, ``size`` pixels high in Pillow's built-in font, rotated by ``angle`` degrees."""
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(symbol)
    canvas = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(canvas).text((4 - left, 4 - top), symbol, fill=255, font=font)
    ink = np.asarray(canvas.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)) > 127
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def scene(seed: int) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """A photograph-like scene and the boxes (left, top, width, height) of its target's copies, first the example's."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width] / max(SIZE)
    base = rng.uniform(140, 230, 3)
    slope = rng.uniform(-40, 40, (2, 3))
    image = base + x[..., None] * slope[0] + y[..., None] * slope[1]
    for _ in range(6):  # smooth blotches: shadows and stains
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(40, 160)
        image += rng.uniform(-30, 30, 3) * np.exp(-(((y * max(SIZE) - cy) ** 2 + (x * max(SIZE) - cx) ** 2)
                                                     / (2 * radius ** 2)))[..., None]
    target, *others = rng.choice(list(SYMBOLS), 6, replace=False)
    copies, distractors = rng.integers(3, 6), rng.integers(3, 6)
    symbols = [target] * copies + list(rng.choice(others, distractors))
    taken = np.zeros((height, width), bool)
    boxes = []
    for i, symbol in enumerate(symbols):
        ink = glyph(symbol, int(rng.integers(50, 111)), rng.uniform(-20, 20))
        for _ in range(200):  # a place that overlaps nothing drawn yet (with a margin)
            top, left = rng.integers(0, height - ink.shape[0]), rng.integers(0, width - ink.shape[1])
            if not taken[max(top - 10, 0):top + ink.shape[0] + 10, max(left - 10, 0):left + ink.shape[1] + 10].any():
                break
        taken[top:top + ink.shape[0], left:left + ink.shape[1]] = True
        image[top:top + ink.shape[0], left:left + ink.shape[1]][ink] = rng.uniform(10, 90, 3)
        if i < copies:
            boxes.append((int(left), int(top), int(ink.shape[1]), int(ink.shape[0])))
    image += rng.normal(0, 6, image.shape)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return Image.open(buffer).convert("RGB"), boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, nargs="+", help="segmentation or K-shot detection run directories")
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", metavar="DIR", help="also write the scenes and their labels there")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenes = [scene(seed) for seed in range(args.scenes)]
    if args.save:
        from pathlib import Path

        Path(args.save).mkdir(parents=True, exist_ok=True)
        for i, (picture, boxes) in enumerate(scenes):
            picture.save(Path(args.save) / f"scene{i:02d}.png")
            (Path(args.save) / f"scene{i:02d}.txt").write_text("".join(f"{' '.join(map(str, b))}\n" for b in boxes))
    copies = sum(len(b) - 1 for _, b in scenes)
    print(f"{args.scenes} scenes of {SIZE[0]}x{SIZE[1]}, {copies} copies to find beside the examples")
    print(f"{'run':<28} {'AP50':>6} {'AP':>6} {'recall':>7} {'boxes/scene':>11} {'s/scene':>8}")
    for run in args.run:
        detector = FewShotDetector.from_run(run, min_score=-1.0)
        threshold = FewShotDetector.from_run(run).threshold
        found, truths, recalled, kept, start = [], [], 0, 0, time.perf_counter()
        for picture, boxes in scenes:
            result = detector.fit_boxes(picture, [boxes[0]]).detect([picture])[0]
            found_boxes, scores = torch.from_numpy(result.boxes), torch.from_numpy(result.scores)
            example = torch.tensor([boxes[0]], dtype=torch.float64)
            rest = box_iou(found_boxes, example)[:, 0] < 0.5 if len(found_boxes) else torch.zeros(0, dtype=torch.bool)
            found_boxes, scores = found_boxes[rest], scores[rest]
            truth = torch.tensor(boxes[1:], dtype=torch.float64).reshape(-1, 4)
            found.append(Detections(found_boxes, scores, torch.zeros(len(scores), dtype=torch.long)))
            truths.append(GroundTruth(truth, torch.zeros(len(truth), dtype=torch.long)))
            confident = found_boxes[scores >= threshold]
            kept += len(confident)
            if len(confident):
                recalled += int((box_iou(truth, confident).amax(1) >= 0.5).sum())
        seconds = (time.perf_counter() - start) / len(scenes)
        ap50 = average_precision(found, truths, iou_thresholds=(0.5,))
        print(f"{run:<28} {ap50:6.3f} {average_precision(found, truths):6.3f} {recalled / copies:7.3f} "
              f"{kept / len(scenes):11.1f} {seconds:8.2f}  (recall and boxes at its default score {threshold})")


if __name__ == "__main__":
    main()
