"""What the page draws with, read from its own files, and Omniglot's test characters as a person draws them
on the page (strokes traced along each image's skeleton, scaled to the page's canvas, drawn with its pen):
the workload of the tests and of the latency benchmark."""
from __future__ import annotations

import base64
import io
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from fastadapt.datasets.drawing import OMNIGLOT_SIZE, ink_mask, render_strokes, trace_strokes
from fastadapt.datasets.omniglot import _list_archive

STATIC = Path(__file__).parent / "static"
#: The page's canvases are this many canvas pixels square; its pen is this many wide.
CANVAS = int(re.search(r'id="query-canvas" width="(\d+)"', (STATIC / "index.html").read_text()).group(1))
PAGE_PEN = float(re.search(r"const PEN_WIDTH = ([\d.]+);", (STATIC / "app.js").read_text()).group(1))
#: How far a traced stroke may stray from the skeleton, in pixels at 105x105 (fewer mouse moves).
TOLERANCE = 0.7


def canvas_strokes(image: Image.Image, canvas: int = CANVAS) -> list[np.ndarray]:
    """The pen strokes of an Omniglot-like drawing (dark on light), in the page canvas's pixel coordinates."""
    scale = canvas / OMNIGLOT_SIZE
    return [(stroke + 0.5) * scale for stroke in trace_strokes(ink_mask(image), TOLERANCE)]


def canvas_drawing(image: Image.Image, pen: float = PAGE_PEN, canvas: int = CANVAS) -> Image.Image:
    """The drawing as the page's canvas holds it once drawn over: black strokes on white."""
    return render_strokes(canvas_strokes(image, canvas), canvas, pen)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class HeldOutCharacters:
    """The 423 test characters of Omniglot's 'vinyals' split (the last of the evaluation set), 20 drawings
    each, read from images_evaluation.zip in ``omniglot_dir``."""

    def __init__(self, omniglot_dir: str | Path) -> None:
        path = Path(omniglot_dir) / "images_evaluation.zip"
        members = _list_archive(path)
        self.names = sorted(members)[-423:]
        self.drawings = {name: members[name] for name in self.names}
        self.archive = zipfile.ZipFile(path)  # its directory read once

    def image(self, name: str, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.archive.read(self.drawings[name][index]))).convert("L")

    def episode(self, rng: np.random.Generator, way: int) -> list[tuple[str, int, int]]:
        """``way`` distinct characters, each with two distinct drawings (support, query)."""
        picked = rng.choice(len(self.names), way, replace=False)
        return [(self.names[c], *map(int, rng.choice(20, 2, replace=False))) for c in picked]
