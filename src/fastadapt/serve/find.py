"""The page's second mode, "find it": a symbol drawn (or uploaded) on the page, found on a cluttered scene.

The scene is either drawn here the benchmark's way (``datasets.cluttered_omniglot.scene_with``: a 96x96 canvas of
Omniglot test characters, the test-one-shot split's alphabets and drawers, holding a few copies of the symbol,
each rotated, sheared, scaled and coloured at random, drawn last) or uploaded. On a drawn scene the symbol is
first redrawn as Omniglot's drawings look (``datasets.drawing``) and its reference made as the benchmark makes
them, so the detector sees what it was built for; on an uploaded scene the symbol is an example crop at the
scene's scale (``FewShotDetector``'s rule: draw it as large as it appears there). The detector is a segmentation
run's (``fastadapt serve --detector RUN``) or template matching, which needs no training.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image

from fastadapt.datasets.cluttered_omniglot import SPLITS, load_glyphs, scene_with
from fastadapt.datasets.drawing import as_omniglot_drawing
from fastadapt.detector import FewShotDetector, ImageDetections
from fastadapt.serve.model import png_url

#: The split whose characters fill a drawn scene.
SCENE_SPLIT = "test-one-shot"
#: Tint of the mask on the page (RGBA).
MASK_RGBA = (255, 200, 0, 150)


def template_matching_detector() -> FewShotDetector:
    """Template matching as a detector: nothing to train, no run needed."""
    return FewShotDetector.template_matching()


class SceneFinder:
    """A detector and, where Omniglot's archives are on this machine (``omniglot_dir``), the test characters
    to draw scenes with (read on first use). ``find`` changes nothing on ``self`` but that first read."""

    def __init__(self, detector: FewShotDetector, omniglot_dir: str | None) -> None:
        self.detector, self.omniglot_dir = detector, omniglot_dir
        self._glyphs: list | None = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"method": self.detector.config.method.name, "min_score": self.detector.threshold,
                "scenes": self.omniglot_dir is not None}

    def glyphs(self) -> list:
        if self.omniglot_dir is None:
            raise ValueError("Omniglot's archives are not on this machine, so no scene can be drawn here: upload a "
                             "scene (or start fastadapt serve with --data-root)")
        with self._lock:
            if self._glyphs is None:
                self._glyphs = load_glyphs(SCENE_SPLIT, self.omniglot_dir)
        return self._glyphs

    def find(self, symbol: Image.Image, scene: Image.Image | None, characters: int, copies: int,
             seed: int) -> dict[str, Any]:
        """The boxes, scores and mask of the symbol on the scene (drawn here when None), with the scene, the
        reference searched for and, on a drawn scene, where the copies truly are."""
        if scene is not None:
            found = self.detector.find([symbol], None, [scene], ["the symbol"], ["the scene"])[0]
            return self._reply(np.asarray(scene.convert("RGB")), None, found, None)
        glyphs = self.glyphs()
        target = Image.fromarray(np.asarray(as_omniglot_drawing(symbol)) < 128)
        rng = np.random.RandomState(seed)
        drawers = SPLITS[SCENE_SPLIT].drawers
        distractors = [glyphs[rng.randint(len(glyphs))][rng.randint(*drawers)] for _ in range(characters - copies)]
        canvas, reference, truth = scene_with(rng, target, distractors, copies)
        found = self.detector.find([reference], None, [canvas], ["the symbol's reference"], ["the scene"])[0]
        return self._reply(canvas, reference, found, truth)

    def _reply(self, scene: np.ndarray, reference: np.ndarray | None, found: ImageDetections,
               truth: np.ndarray | None) -> dict[str, Any]:
        mask = np.zeros((*found.mask.shape, 4), np.uint8)
        mask[found.mask] = MASK_RGBA
        return {"scene": png_url(scene), "width": scene.shape[1], "height": scene.shape[0],
                "reference": None if reference is None else png_url(reference), "mask": png_url(mask),
                "mask_pixels": int(found.mask.sum()), "scale": found.scale,
                "detections": [{"box": [round(float(v), 2) for v in box], "score": round(float(score), 4)}
                               for box, score in zip(found.boxes, found.scores)],
                "truth": None if truth is None else truth.tolist()}

