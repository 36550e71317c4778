"""Cluttered Omniglot (Michaelis, Bethge & Ecker, 2018), regenerated bit for bit from the Omniglot zips.

The benchmark of "One-Shot Segmentation in Clutter" is procedural: a 96x96
canvas holds N Omniglot drawings (N - 1 distractors, then the target, drawn
last and so never occluded), each rotated, sheared, scaled and given a random
RGB colour; a 32x32 reference shows the target's drawing again, re-rotated and
re-sheared but not re-scaled, centred; the answer is the target's mask. The
full set is more than 500 GB, so it is regenerated rather than downloaded:
this module is an independent implementation of the published generator
(github.com/michaelisc/cluttered-omniglot, version of 5 September 2018), and
``generate_job`` reproduces its canvases exactly, as the MD5s of the last
canvas of every evaluation split and level, published with it, confirm.

The official data are organised in jobs of 2,000 canvases: a split's seed
draws 2 x (number of jobs) 32-bit numbers, which are sorted and deduplicated,
and job k reseeds numpy's legacy generator with the k-th of them. Within a
job, each canvas draws, in this order: the target (character, drawing); the
distractors, each (character, drawing, rotation, shear, x scale, y scale,
three colour numbers, x, y); one uniform number (the "empty canvas" draw,
always 0 here); the target's transform, colour and position; then the
reference's transform (scale fixed at 1, though its two scale numbers are
still drawn) and colour. A drawing whose transformed and cropped ink is empty
is a failed draw and is redrawn: a distractor draws a new character, the
target and the reference a new transform of the same drawing. The crop keeps
rows and columns from the first inked one up to, but excluding, the last inked
one (as the original did), so a drawing inked in a single row or column crops
to nothing; that failure happens after its three colour numbers are drawn,
whereas a drawing with no ink at all fails before them.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from fastadapt.datasets.omniglot import find_omniglot_archives

CANVAS_SIZE = 96
REFERENCE_SIZE = 32
#: Characters per canvas (distractors + target) of the levels the paper reports.
LEVELS = (4, 8, 16, 32, 64, 128, 256)
JOB_LENGTH = 2000
MAX_ROTATION = 20.0  # degrees, uniform in +-
MAX_SHEAR = 10.0  # degrees, uniform in +-
MAX_SCALE = 2.0  # each axis scaled by MAX_SCALE ** uniform(-1, 1)
_GLYPH_SIZE = 105  # Omniglot drawings are 105 x 105
_DRAWN_SIZE = 32  # a 105-pixel extent is drawn 32 pixels wide


@dataclass(frozen=True)
class Split:
    """One official split: which alphabets, which drawers (0-based, end exclusive), the seed and the size."""

    image_set: str  # "images_background" or "images_evaluation"
    alphabets: slice  # of that set's alphabets in sorted order
    drawers: tuple[int, int]
    seed: int
    size: int


SPLITS = {
    "train": Split("images_background", slice(None), (0, 10), 2209944264, 2_000_000),
    "val-train": Split("images_background", slice(None), (10, 20), 4020197800, 10_000),
    "test-train": Split("images_background", slice(None), (10, 20), 1665765955, 10_000),
    "val-one-shot": Split("images_evaluation", slice(0, 10), (10, 20), 3755213170, 10_000),
    "test-one-shot": Split("images_evaluation", slice(10, 20), (10, 20), 2301871561, 10_000),
}

#: MD5 (hex) of the last canvas (96 x 96 x 3 uint8, C order) of each evaluation split, per level, as published
#: with the generator on 5 September 2018. The training split has none.
PUBLISHED_MD5 = {
    4: {"val-train": "8c999e5c4a9a8131672e6542a0b3f266", "test-train": "3bf805b2766b2321f9adb988d10a0fba",
        "val-one-shot": "c684f499183c637882ebed2abbca128b", "test-one-shot": "d38c880d4ddf53704ba7f2660a3f0ead"},
    8: {"val-train": "0c590ff42387323a32e11252cf957268", "test-train": "927fa33e400c6caa96d7adba4f6addac",
        "val-one-shot": "b96dc0bd4e38f20f6b6b8c264e88e2b0", "test-one-shot": "4df18d0de6f5ba0952e3ccd291f29681"},
    16: {"val-train": "327d08f3e1b1b1b5ed8905f163ed795e", "test-train": "8b733e95a86e394e77f04583f87e2bf2",
         "val-one-shot": "de38a604df713cf0052661004542c942",
         "test-one-shot": "bf877579ec90bf209a96789ed977d394"},
    32: {"val-train": "81338976c8bdc1368d4ec55a9e533d79", "test-train": "6fd4e0618a800fba325f06ff45edf96e",
         "val-one-shot": "3a05e203fb858418c5188164d956b95b", "test-one-shot": "cc96e14490baeda3ff1cd7d7dfe4d041"},
    64: {"val-train": "1119485a052df341e8e60f9f140acb17", "test-train": "56500ccfa0ef075f855ba70c4c2a7ca2",
         "val-one-shot": "280fba2c0c982b85a96ed0611be07003", "test-one-shot": "57f4c7ed1966c53066b3b3c880f0da90"},
    128: {"val-train": "8a114f8035b6cff04cafad93bf262fb2", "test-train": "c8d136fab21668d8a368f58ea7009076",
          "val-one-shot": "05d2d93454e1bbb633909e58d809fcb9", "test-one-shot": "656c85dafc77cee0f59cb72076c64a3d"},
    256: {"val-train": "73ff5a4fc16a877fbf1f6af25dc99f14", "test-train": "44be0e5a25b2165aea18531d2136d077",
          "val-one-shot": "fb5ae42406d8384a99fa0b2a92dda3a8", "test-one-shot": "7aee40640f7de8d3f3adf7e8c95dfb62"},
}


class Job(NamedTuple):
    """A job's canvases (n, 96, 96, 3) uint8, target masks (n, 96, 96) uint8 in {0, 1} and references
    (n, 32, 32, 3) uint8, plus the target's box (n, 4) as (left, top, width, height) in canvas pixels."""

    canvases: np.ndarray
    masks: np.ndarray
    references: np.ndarray
    boxes: np.ndarray


def load_glyphs(split: str, root: str | os.PathLike | None = None) -> list[list[Image.Image]]:
    """The split's characters in the official order (alphabets, then characters, sorted by name), each a list
    of its 20 drawings (sorted by file name, i.e. by drawer) as 105x105 mode-"1" images, ink = 1.

    ``root`` is where images_background.zip and images_evaluation.zip are (see ``load_omniglot``)."""
    spec = _split(split)
    archive_path = {p.name: p for p in find_omniglot_archives(root)}[spec.image_set + ".zip"]
    with zipfile.ZipFile(archive_path) as archive:
        drawings: dict[tuple[str, str], list[str]] = {}
        for member in archive.namelist():
            parts = member.split("/")
            if len(parts) == 4 and parts[0] == spec.image_set and parts[3].endswith(".png"):
                drawings.setdefault((parts[1], parts[2]), []).append(member)
        alphabets = sorted({alphabet for alphabet, _ in drawings})[spec.alphabets]
        chosen = set(alphabets)
        glyphs = []
        for key in sorted(k for k in drawings if k[0] in chosen):
            glyphs.append([_read_glyph(archive, member) for member in sorted(drawings[key])])
    if any(len(g) != 20 for g in glyphs):
        raise ValueError(f"{archive_path} is not the full Omniglot: every character needs 20 drawings")
    return glyphs


def glyph_tensor(glyphs: Sequence[Sequence[Image.Image]]) -> torch.Tensor:
    """``load_glyphs``'s drawings as one (characters, drawings, 105, 105) bool tensor, ink = True."""
    return torch.from_numpy(np.stack([np.stack([np.asarray(d, dtype=bool) for d in c]) for c in glyphs]))


def _read_glyph(archive: zipfile.ZipFile, member: str) -> Image.Image:
    with Image.open(io.BytesIO(archive.read(member))) as image:
        ink = np.asarray(image.convert("L")) < 128  # the PNGs are black strokes on white
    return Image.fromarray(ink)


def job_seeds(split: str) -> np.ndarray:
    """The seed of each of the split's jobs, in job order."""
    spec = _split(split)
    jobs = spec.size // JOB_LENGTH
    return np.unique(np.random.RandomState(spec.seed).randint(2**32, size=2 * jobs))[:jobs]


def generate_job(
    glyphs: Sequence[Sequence[Image.Image]], characters: int, split: str, job: int, length: int = JOB_LENGTH
) -> Job:
    """The first ``length`` canvases of job ``job`` of ``split`` at ``characters`` characters per canvas.

    ``glyphs`` is ``load_glyphs(split)``. With the default length this is one official job, bit for bit."""
    if characters < 1:
        raise ValueError(f"characters must be at least 1 (the target), got {characters}")
    seeds = job_seeds(split)
    if not 0 <= job < len(seeds):
        raise ValueError(f"split {split!r} has jobs 0 to {len(seeds) - 1}, not {job}")
    return generate_canvases(glyphs, characters, _split(split).drawers, int(seeds[job]), length)


def generate_canvases(
    glyphs: Sequence[Sequence[Image.Image]], characters: int, drawers: tuple[int, int], seed: int, length: int
) -> Job:
    """``length`` canvases from numpy's legacy generator seeded with ``seed``, drawings taken from drawers
    ``drawers[0]`` to ``drawers[1] - 1`` of ``glyphs``: an official job when the seed is one of ``job_seeds``."""
    rng = np.random.RandomState(seed)
    canvases = np.zeros((length, CANVAS_SIZE, CANVAS_SIZE, 3), np.uint8)
    masks = np.zeros((length, CANVAS_SIZE, CANVAS_SIZE), np.uint8)
    references = np.zeros((length, REFERENCE_SIZE, REFERENCE_SIZE, 3), np.uint8)
    boxes = np.zeros((length, 4), np.int64)
    for i in range(length):
        target = glyphs[rng.randint(0, len(glyphs))][rng.randint(*drawers)]
        for _ in range(characters - 1):
            while (drawn := _draw(rng, glyphs[rng.randint(0, len(glyphs))][rng.randint(*drawers)])) is None:
                pass
            _paste_at_random(rng, canvases[i], *drawn)
        rng.random_sample()  # the original's "empty canvas" draw (probability 0)
        while (drawn := _draw(rng, target)) is None:
            pass
        left, top = _paste_at_random(rng, canvases[i], *drawn)
        ink = drawn[0]
        masks[i, top:top + ink.shape[0], left:left + ink.shape[1]] = ink
        boxes[i] = (left, top, ink.shape[1], ink.shape[0])
        while (drawn := _draw(rng, target, scale=1.0)) is None:
            pass
        _paste_centred(references[i], *drawn)
    return Job(canvases, masks, references, boxes)


def scene_with(rng: np.random.RandomState, target: Image.Image, distractors: Sequence[Image.Image], copies: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A canvas drawn the benchmark's way holding ``copies`` drawings of ``target`` (a 105x105 mode-"1" glyph, ink
    = 1), each its own random transform, colour and place, drawn last after one drawing of each distractor; and
    the target's reference (scale 1, centred, as the benchmark's). Returns the canvas (96, 96, 3), the reference
    (32, 32, 3) and the copies' boxes (copies, 4) as (left, top, width, height). An extension for the web page's
    "find it" mode (the benchmark has one target a canvas); a target whose every transform is empty is a
    ValueError."""
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE, 3), np.uint8)
    for glyph in distractors:
        drawn = _draw(rng, glyph)
        if drawn is not None:
            _paste_at_random(rng, canvas, *drawn)
    boxes = []
    for _ in range(copies):
        drawn = next((d for d in (_draw(rng, target) for _ in range(20)) if d is not None), None)
        if drawn is None:
            raise ValueError("the symbol leaves no ink once drawn at the benchmark's size")
        left, top = _paste_at_random(rng, canvas, *drawn)
        boxes.append((left, top, drawn[0].shape[1], drawn[0].shape[0]))
    reference = np.zeros((REFERENCE_SIZE, REFERENCE_SIZE, 3), np.uint8)
    drawn = next((d for d in (_draw(rng, target, scale=1.0) for _ in range(20)) if d is not None), None)
    if drawn is None:
        raise ValueError("the symbol leaves no ink once drawn at the benchmark's size")
    _paste_centred(reference, *drawn)
    return canvas, reference, np.array(boxes, np.int64).reshape(-1, 4)


def canvas_md5(canvas: np.ndarray) -> str:
    """The MD5 the official generator prints for a canvas (its uint8 bytes in C order)."""
    return hashlib.md5(np.ascontiguousarray(canvas, dtype=np.uint8).tobytes()).hexdigest()


def _draw(rng: np.random.RandomState, glyph: Image.Image, scale: float = MAX_SCALE):
    """A random affine transform of ``glyph``, cropped to its ink and coloured: (ink (h, w) bool, rgb (3,) uint8),
    or None for a failed draw (no ink left)."""
    ink = _transform(rng, glyph, scale)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    # The crop stops before the last inked row and column, as the original's did.
    ink = ink[rows[0]:rows[-1], cols[0]:cols[-1]]
    colour = (255.0 * rng.random_sample(3)).astype(np.uint8)
    if ink.size == 0:
        return None
    return ink, colour


def _transform(rng: np.random.RandomState, glyph: Image.Image, scale: float) -> np.ndarray:
    """Rotate by phi and shear by theta (both uniform in degrees), scale the axes by scale ** uniform(-1, 1) each,
    into the bounding box of the transformed square, then shrink by 32/105; nearest-neighbour, as Pillow does it."""
    phi = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    theta = math.radians(rng.uniform(-MAX_SHEAR, MAX_SHEAR))
    sx = scale ** rng.uniform(-1, 1)
    sy = scale ** rng.uniform(-1, 1)
    # Forward map (x, y) -> (xx * x + xy * y, yx * x + yy * y): columns of the linear part.
    xx, xy = sx * math.cos(phi + theta), sy * math.sin(phi - theta)
    yx, yy = -sx * math.sin(phi + theta), sy * math.cos(phi - theta)
    width, height = sx * glyph.size[0], sy * glyph.size[1]
    corners_x = [0.0, math.sin(phi - theta) * height, math.cos(phi + theta) * width,
                 math.cos(phi + theta) * width + math.sin(phi - theta) * height]
    corners_y = [0.0, math.cos(phi - theta) * height, -math.sin(phi + theta) * width,
                 -math.sin(phi + theta) * width + math.cos(phi - theta) * height]
    left, right, top, bottom = min(corners_x), max(corners_x), min(corners_y), max(corners_y)
    forward = np.array([[xx, xy, -left], [yx, yy, -top], [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)  # Pillow wants the map from output to input pixels
    image = glyph.transform((int(right - left), int(bottom - top)), Image.Transform.AFFINE,
                            tuple(inverse[:2].flatten()))
    image = image.resize((int(_DRAWN_SIZE * (right - left) / _GLYPH_SIZE),
                          int(_DRAWN_SIZE * (bottom - top) / _GLYPH_SIZE)))
    return np.asarray(image, dtype=bool)


def _paste_at_random(rng: np.random.RandomState, canvas: np.ndarray, ink: np.ndarray,
                     colour: np.ndarray) -> tuple[int, int]:
    left = rng.randint(0, canvas.shape[1] - ink.shape[1] + 1)
    top = rng.randint(0, canvas.shape[0] - ink.shape[0] + 1)
    canvas[top:top + ink.shape[0], left:left + ink.shape[1]][ink] = colour
    return left, top


def _paste_centred(image: np.ndarray, ink: np.ndarray, colour: np.ndarray) -> None:
    """Centre ``ink`` (rounding the offset down, which may be negative) and clip it to the image."""
    top, left = ((image.shape[0] - ink.shape[0]) // 2, (image.shape[1] - ink.shape[1]) // 2)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ink.shape[0], image.shape[0]), min(left + ink.shape[1], image.shape[1])
    image[y0:y1, x0:x1][ink[y0 - top:y1 - top, x0 - left:x1 - left]] = colour


def read_rgb(path: str | os.PathLike, size: int, what: str) -> torch.Tensor:
    """An image file as (3, size, size) uint8 RGB (characters on black, as the benchmark draws them). A file
    that cannot be read as an image, or is not ``size`` x ``size`` pixels, is a ValueError naming it and ``what``
    it was to be (a reference is 32 x 32 pixels, a canvas 96 x 96)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as error:  # a missing, unreadable or corrupt file (UnidentifiedImageError)
        raise ValueError(f"cannot read the {what} {path}: {error}") from None
    if rgb.size != (size, size):
        raise ValueError(f"the {what} {path} is {rgb.size[0]}x{rgb.size[1]} pixels; a cluttered-Omniglot run reads "
                         f"{size}x{size} {what}s")
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


def _split(name: str) -> Split:
    if name not in SPLITS:
        raise ValueError(f"unknown cluttered Omniglot split {name!r}; choose one of {', '.join(SPLITS)}")
    return SPLITS[name]
