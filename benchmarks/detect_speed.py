"""Time of FewShotDetector.detect (what `fastadapt detect` runs per image) on a 96x96 cluttered-Omniglot canvas
and on a 1-megapixel "photograph" (1000x1000, dark characters on light paper), per method, one example.

    python benchmarks/detect_speed.py --data-root /work/shared/data/omniglot --threads 2 --repeats 20

The canvas is val-one-shot's first (4 characters), searched at its own scale from its 32x32 reference. The
photograph holds 16 val-one-shot characters drawn as dark strokes on light paper, each about OBJECT pixels on its
longer side (--object), the example a box around the first: the image is rescaled so that its characters come
out at a reference's size (19 pixels), then tiled. The methods: template-matching (nothing to train) and an
untrained siamese-unet of the preset's width (cluttered-omniglot-4-cpu: 16), whose time does not depend on its
weights. Prints the median and the 10% / 90% quantiles of the time per image (fit excluded: done once), and the
median CPU time of the process (on a shared machine, what the call itself costs). Then
the server's work for the web page's "find it" mode (SceneFinder.find, what POST /api/find runs after decoding:
redrawing the symbol, drawing a scene of 8 characters with 2 copies, fitting, detecting, encoding the PNGs) for
an Omniglot test character drawn as the page's canvas holds it, template matching.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from fastadapt.algorithms.segmentation_baselines import TemplateMatching
from fastadapt.algorithms.siamese_unet import SiameseUNet
from fastadapt.config.schema import Config
from fastadapt.datasets.cluttered_omniglot import generate_job, load_glyphs
from fastadapt.detector import FewShotDetector, cut_tiles, foreground, rescale
from fastadapt.serve.find import SceneFinder, template_matching_detector
from fastadapt.serve.model import omniglot_here
from fastadapt.serve.page import HeldOutCharacters, canvas_drawing


def photograph(references: np.ndarray, size: int, object_side: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """A size x size light-grey image with each reference's character redrawn dark, scaled to ``object_side``
    pixels on its longer side, at random places on a grid; and the first one's box."""
    rng = np.random.default_rng(seed)
    paper = np.full((size, size, 3), 235, np.uint8)
    cells = size // (object_side + object_side // 2)
    boxes = []
    for i, reference in enumerate(references[:cells * cells]):
        ink = reference.max(-1) > 0
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        glyph = Image.fromarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        factor = object_side / max(glyph.size)
        glyph = np.asarray(glyph.resize((max(1, round(glyph.size[0] * factor)), max(1, round(glyph.size[1] * factor)))))
        cell = size // cells
        top = (i // cells) * cell + rng.integers(0, cell - glyph.shape[0] + 1)
        left = (i % cells) * cell + rng.integers(0, cell - glyph.shape[1] + 1)
        paper[top:top + glyph.shape[0], left:left + glyph.shape[1]][glyph] = 40
        boxes.append((left, top, glyph.shape[1], glyph.shape[0]))
    return paper, boxes


def timed(work, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """The wall-clock and the process's CPU milliseconds of each of ``repeats`` calls of ``work(i)``, after one
    call to warm up. On a shared machine the CPU time is the steadier: it leaves out the time other jobs take."""
    work(0)
    wall, cpu = [], []
    for i in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        work(i)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return np.array(wall) * 1000, np.array(cpu) * 1000


def row(method: str, image: str, times: tuple[np.ndarray, np.ndarray]) -> str:
    wall, cpu = times
    return (f"{method:<18} {image:<22} {np.median(wall):9.1f} {np.quantile(wall, 0.1):7.1f} "
            f"{np.quantile(wall, 0.9):7.1f} {np.median(cpu):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--object", type=int, default=100, help="the photograph's characters' size, pixels")
    parser.add_argument("--size", type=int, default=1000, help="the photograph's side, pixels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    job = generate_job(load_glyphs("val-one-shot", args.data_root), 4, "val-one-shot", 0, length=64)
    paper, boxes = photograph(job.references, args.size, args.object)
    torch.manual_seed(0)
    learners = {"template-matching": TemplateMatching(), "siamese-unet": SiameseUNet(16)}
    scale = 19 / max(boxes[0][2:])
    tiles = len(cut_tiles(rescale(foreground(paper), scale))[0])
    print(f"{args.threads} thread(s); photograph {args.size}x{args.size}, {len(boxes)} characters of {args.object} "
          f"px, searched at {scale:.3f}x in {tiles} tiles")
    print(f"{'method':<18} {'image':<22} {'median ms':>9} {'10%':>7} {'90%':>7} {'CPU ms':>8}")
    for name, learner in learners.items():
        config = Config(tasks="cluttered-omniglot", algorithm=name)
        canvas = FewShotDetector(learner, config).fit([job.references[0]])
        photo = FewShotDetector(learner, config).fit_boxes(paper, [boxes[0]])
        for label, detector, image in (("96x96 canvas", canvas, job.canvases[0]),
                                       (f"{args.size}x{args.size} photograph", photo, paper)):
            times = timed(lambda i, detector=detector, image=image: detector.detect([image]), args.repeats)
            print(row(name, label, times), flush=True)
    omniglot = omniglot_here(args.data_root)
    characters = HeldOutCharacters(omniglot)
    symbol = canvas_drawing(characters.image(characters.names[7], 0)).convert("RGB")
    finder = SceneFinder(template_matching_detector(), omniglot)
    finder.find(symbol, None, 8, 2, 0)  # warm-up: reads the test characters
    print(row("template-matching", "find it (page)", timed(lambda seed: finder.find(symbol, None, 8, 2, seed),
                                                           args.repeats)))


if __name__ == "__main__":
    main()
