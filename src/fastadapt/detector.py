"""A trained segmentation run as a few-shot detector for your own images: "here are a few examples, find the rest".

    detector = FewShotDetector.from_run("runs/tm")                   # template-matching, siamese-unet, ...
    detector.fit(["a1.png", "a2.png", "b1.png"], ["a", "a", "b"])     # crops of each class, one or more
    found = detector.detect(["scene.png"])[0]                         # found.boxes, .scores, .classes, .mask
    detector.fit_boxes("scene.png", [(10, 12, 30, 28)], ["a"])        # or: boxes on an image itself

One class is enough (no base classes are needed), and each class may have any number of examples. The run was
trained on cluttered Omniglot: characters on a black 96x96 canvas, found from a 32x32 reference. Your images are
brought to that form:

* **Foreground.** An image whose border is black (the benchmark's canvases and references) is taken as it is.
  Any other is drawn on black: its background is the median colour of its border pixels, and a pixel whose
  colour differs from it by more than FOREGROUND_LEVEL (of 255) in some channel is foreground, drawn as that
  difference (dark strokes on paper come out bright on black).
* **Scale.** Each example's foreground box gives its object's size; the examples are drawn as references (their
  longer side REFERENCE_INK pixels, the median of the benchmark's references, centred on 32x32), and every image
  is rescaled by the same factor (the median over the examples), so that its objects come out about the size
  of a reference's character, which the methods find at 0.5 to 2 times that size. So example crops must come
  from images at the scale of the images searched. Examples that are already 32x32 references on black leave
  the images at their own scale; ``scale=`` fixes the factor.
* **Tiles.** The rescaled image is cut into 96x96 canvases overlapping by TILE_OVERLAP pixels (padded with black
  at its right and bottom edges), so an object up to TILE_OVERLAP pixels wide lies whole in some canvas.

Every class's examples are matched against every tile; each match is a box with a score (the method's: an NCC
for template matching, a heatmap probability for the Siamese U-Net). Matches scored at least ``min_score`` are
mapped back to the image's pixels and merged by non-maximum suppression across examples, tiles and classes
(one class per object: the highest-scored), the ``max_detections`` best kept. The mask is the method's
segmentation of each tile, kept inside the boxes found, at the image's size.

Runs of the K-shot detection methods (``--tasks cluttered-omniglot-detection``) work too: all classes' examples
are one episode's references (a class with fewer examples than the most has its own repeated in turn), the
tiles its canvases; they give boxes and classes but no mask (an empty one).

Thread safety is as ``FewShotClassifier``'s: the learner is never changed, ``fit`` replaces the fitted examples in
one assignment, and ``find`` (fit and detect in one call) changes nothing on ``self``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from PIL import Image

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.registry import method_names, method_of
from fastadapt.algorithms.segmentation_baselines import TemplateMatching
from fastadapt.classifier import load_trained_run
from fastadapt.config.schema import Config
from fastadapt.datasets.cluttered_omniglot import CANVAS_SIZE, REFERENCE_SIZE
from fastadapt.datasets.preparation import ImageLike, to_pil
from fastadapt.tasks.boxes import nms
from fastadapt.training.device import resolve_device

#: A pixel differing from the background by more than this (of 255) in some channel is foreground.
FOREGROUND_LEVEL = 40
#: After rescaling, a pixel is foreground where its brightest channel reaches this (half FOREGROUND_LEVEL: a
#: stroke thinner than a pixel after shrinking keeps its place, fainter).
RESCALED_LEVEL = FOREGROUND_LEVEL // 2
#: The longer side of a reference's character, in pixels: the median of the benchmark's (val-one-shot, job 0,
#: first 300 references; 10% and 90%: 14 and 25).
REFERENCE_INK = 19
#: Tiles overlap by this many pixels (their stride is CANVAS_SIZE - TILE_OVERLAP).
TILE_OVERLAP = 48
#: The fewest pixels an image may have on either side, and an example's object.
MIN_IMAGE_SIDE, MIN_OBJECT_SIDE = 8, 2
#: Matches taken from each tile for each example, before merging.
PER_TILE = 16
#: Tiles searched at once (bounds the memory of one call).
TILE_BATCH = 32

PARAMETERS = ("learner", "config", "min_score", "iou_threshold", "max_detections", "scale", "device")


@dataclass(frozen=True)
class ImageDetections:
    """What was found on one image: boxes (n, 4) as (left, top, width, height) in the image's pixels, highest
    score first; their scores (n,) and classes (n labels); the mask (H, W) bool; and the factor the image was
    rescaled by before it was searched."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: list[Hashable]
    mask: np.ndarray
    scale: float

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class _Fitted:
    classes: list[Hashable]
    reference_classes: torch.Tensor  # the class index of each reference (segmentation runs)
    prepared: Any  # the learner's ``prepare`` (segmentation) or ``adapt`` (detection) of the references
    scale: float


class FewShotDetector:
    def __init__(self, learner: MetaLearner, config: Config, min_score: float | None = None,
                 iou_threshold: float = 0.5, max_detections: int = 100, scale: float | None = None,
                 device: str = "cpu") -> None:
        """``min_score``: the score a match needs (None: the method's default, its learner's ``min_score``);
        ``iou_threshold``: matches overlapping a better one by more are dropped; ``scale``: the factor images are
        rescaled by (None: from the examples, see the module's docstring)."""
        if not finds_objects(config):
            raise ValueError(f"a {config.method.name} run trained on {config.task.family} finds no objects; a "
                             f"detector needs a run of {detector_methods()}")
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        if not 0 <= iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        self.device = device
        self._device = resolve_device(device)
        self.learner = learner.to(self._device).eval().requires_grad_(False)
        self.config, self.min_score, self.iou_threshold = config, min_score, iou_threshold
        self.max_detections, self.scale = max_detections, scale
        self._fitted: _Fitted | None = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", **options: Any) -> "FewShotDetector":
        """The run's best (or last) weights; ``options`` are the constructor's."""
        config, learner = load_trained_run(run_dir, checkpoint)
        if not finds_objects(config):
            raise ValueError(f"{run_dir} is a {config.method.name} run, which finds no objects; a detector needs a "
                             f"run of {detector_methods()} (--tasks cluttered-omniglot or "
                             "cluttered-omniglot-detection)")
        return cls(learner, config, **options)

    @classmethod
    def template_matching(cls, **options: Any) -> "FewShotDetector":
        """Template matching, which needs no run (nothing is trained): the method that carries over to
        photographs of printed symbols, where the trained detectors do not (docs/results.md); ``options`` are the
        constructor's."""
        return cls(TemplateMatching(), Config().replace(tasks="cluttered-omniglot", algorithm="template-matching"),
                   **options)

    # --- scikit-learn's estimator conventions ---
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARAMETERS}

    def set_params(self, **params: Any) -> "FewShotDetector":
        """Change constructor arguments; the detector is built again with them, unfitted."""
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"FewShotDetector has no parameter {', '.join(unknown)}; it has {', '.join(PARAMETERS)}")
        self.__init__(**{**self.get_params(), **params})
        return self

    def __repr__(self) -> str:
        fitted = self._fitted
        state = "unfitted" if fitted is None else f"fitted on {len(fitted.classes)} classes {fitted.classes!r}"
        return (f"FewShotDetector({self.config.method.name}, min_score={self.threshold}, "
                f"iou_threshold={self.iou_threshold}, scale={self.scale}, {state})")

    @property
    def threshold(self) -> float:
        """The score a match needs: ``min_score``, or the method's default."""
        if self.min_score is not None:
            return self.min_score
        return self.learner.min_score

    @property
    def classes_(self) -> list[Hashable]:
        return self._require_fit().classes

    # --- fitting ---
    def fit(self, images: Sequence[ImageLike], labels: Sequence[Hashable] | None = None,
            names: Sequence[str] | None = None) -> "FewShotDetector":
        """Learn the classes from example crops, one object each (labels: one per image; None: all one class,
        "object")."""
        self._fitted = self._fit_crops(images, labels, names)
        return self

    def fit_boxes(self, image: ImageLike, boxes: Sequence[Sequence[float]], labels: Sequence[Hashable] | None = None,
                  name: str = "image") -> "FewShotDetector":
        """Learn the classes from boxes (left, top, width, height) drawn on an image (labels: one per box; None:
        all one class, "object")."""
        self._fitted = self._fit_boxes(image, boxes, labels, name)
        return self

    def detect(self, images: Sequence[ImageLike], names: Sequence[str] | None = None) -> list[ImageDetections]:
        """The objects of the fitted classes on each image."""
        fitted = self._require_fit()
        names = _names(names, len(images), "image")
        return [self._detect(fitted, image, name) for image, name in zip(images, names)]

    def find(self, support: Sequence[ImageLike], labels: Sequence[Hashable] | None, images: Sequence[ImageLike],
             support_names: Sequence[str] | None = None, names: Sequence[str] | None = None
             ) -> list[ImageDetections]:
        """Fit on example crops and detect, in one call that changes nothing on ``self`` (for concurrent callers)."""
        fitted = self._fit_crops(support, labels, support_names)
        names = _names(names, len(images), "image")
        return [self._detect(fitted, image, name) for image, name in zip(images, names)]

    # --- the work ---
    def _require_fit(self) -> _Fitted:
        fitted = self._fitted
        if fitted is None:
            raise ValueError("call fit(images, labels) or fit_boxes(image, boxes) with examples first")
        return fitted

    def _fit_crops(self, images: Sequence[ImageLike], labels: Sequence[Hashable] | None,
                   names: Sequence[str] | None) -> _Fitted:
        if len(images) == 0:
            raise ValueError("no example images: give at least one crop of an object to find")
        names = _names(names, len(images), "example")
        crops = [read_rgb(image, name) for image, name in zip(images, names)]
        as_is = all(c.shape[:2] == (REFERENCE_SIZE, REFERENCE_SIZE) and on_black(c) for c in crops)
        objects = [foreground(crop) for crop in crops]
        sizes = [object_size(o, n) for o, n in zip(objects, names)]
        scale = self.scale or (1.0 if as_is else float(np.median([REFERENCE_INK / s for s in sizes])))
        references = [o if as_is else as_reference(o) for o in objects]
        return self._prepare(references, labels, scale)

    def _fit_boxes(self, image: ImageLike, boxes: Sequence[Sequence[float]], labels: Sequence[Hashable] | None,
                   name: str) -> _Fitted:
        rgb = read_rgb(image, name)
        boxes = check_boxes(boxes, rgb.shape[:2], name)
        drawn = foreground(rgb)
        objects = [drawn[round(top):round(top + h), round(left):round(left + w)] for left, top, w, h in boxes]
        sizes = [object_size(o, f"box {i + 1} on {name}") for i, o in enumerate(objects)]
        scale = self.scale or float(np.median([REFERENCE_INK / s for s in sizes]))
        return self._prepare([as_reference(o) for o in objects], labels, scale)

    def _prepare(self, references: list[np.ndarray], labels: Sequence[Hashable] | None, scale: float) -> _Fitted:
        labels = ["object"] * len(references) if labels is None else list(labels)
        if len(labels) != len(references):
            raise ValueError(f"{len(references)} examples but {len(labels)} labels")
        try:
            classes = sorted(set(labels))
        except TypeError:
            raise TypeError("labels must be all strings or all numbers, to be sorted into classes_") from None
        index = {c: i for i, c in enumerate(classes)}
        stacked = torch.from_numpy(np.stack(references)).permute(0, 3, 1, 2).contiguous().to(self._device)
        reference_classes = torch.tensor([index[label] for label in labels])
        with torch.no_grad():
            if method_of(self.config).segmentation:
                prepared = self.learner.prepare(stacked)
            else:  # one episode: (1, classes, shots, 3, 32, 32), a class's examples repeated up to the most
                shots = int(torch.bincount(reference_classes).max())
                episode = [stacked[reference_classes == c].repeat(shots, 1, 1, 1)[:shots] for c in range(len(classes))]
                prepared = self.learner.adapt(torch.stack(episode)[None])
        return _Fitted(classes, reference_classes, prepared, scale)

    def _detect(self, fitted: _Fitted, image: ImageLike, name: str) -> ImageDetections:
        rgb = read_rgb(image, name)
        height, width = rgb.shape[:2]
        scaled = rescale(foreground(rgb), fitted.scale)
        tiles, origins = cut_tiles(scaled)
        threshold = self.threshold
        boxes, scores, classes, masks = [], [], [], []
        with torch.no_grad():
            for start in range(0, len(tiles), TILE_BATCH):
                batch = tiles[start:start + TILE_BATCH].to(self._device)
                shift = origins[start:start + TILE_BATCH].to(torch.float32)
                offset = torch.cat([shift.flip(1), torch.zeros_like(shift)], 1)[:, None]  # (tiles, 1, 4)
                if method_of(self.config).segmentation:
                    found = self.learner.find(fitted.prepared, batch, PER_TILE, threshold)
                    boxes.append((found.boxes.cpu() + offset[None]).transpose(0, 1).flatten(1, 2))
                    scores.append(found.scores.cpu().transpose(0, 1).flatten(1))  # (tiles, references x count)
                    classes.append(fitted.reference_classes.repeat_interleave(found.scores.shape[-1])
                                   .expand(len(batch), -1))
                    masks.append(found.masks.any(0).cpu())
                else:
                    found = self.learner.detect(fitted.prepared, batch[None])[0].cpu()  # (tiles, D, 6)
                    boxes.append(found[..., :4] + offset)
                    scores.append(torch.where(found[..., 5] >= 0, found[..., 4], -math.inf))
                    classes.append(found[..., 5].long().clamp(min=0))
                    masks.append(torch.zeros(len(batch), *batch.shape[-2:], dtype=torch.bool))
        boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)  # (tiles, n, ...)
        keep = scores >= threshold
        boxes, scores, classes = boxes[keep] / fitted.scale, scores[keep].double(), classes[keep]
        kept = nms(boxes, scores, self.iou_threshold)[:self.max_detections]
        mask = stitch(torch.cat(masks), origins, scaled.shape[:2], (height, width))
        return ImageDetections(boxes[kept].double().numpy(), scores[kept].numpy(),
                               [fitted.classes[i] for i in classes[kept].tolist()], mask, fitted.scale)


def finds_objects(config: Config) -> bool:
    """Whether a run's method finds objects on images: a segmentation or a K-shot detection method."""
    spec = method_of(config)
    return spec.segmentation or spec.detection


def detector_methods() -> str:
    return " / ".join([*method_names(segmentation=True), *method_names(detection=True)])


def _names(names: Sequence[str] | None, count: int, what: str) -> list[str]:
    if names is None:
        return [f"{what} {i + 1}" for i in range(count)]
    if len(names) != count:
        raise ValueError(f"{count} {what}s but {len(names)} names")
    return [str(n) for n in names]


# --- images: read, drawn on black, rescaled, tiled ---
def read_rgb(image: ImageLike, name: str) -> np.ndarray:
    """An image as (H, W, 3) uint8; unreadable, corrupt or smaller than MIN_IMAGE_SIDE: a ValueError naming it."""
    try:
        rgb = np.asarray(to_pil(image, name).convert("RGB"))
    except OSError as error:  # a truncated file fails only when its pixels are decoded
        raise ValueError(f"cannot read {name}: {error}") from None
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} is {rgb.shape[1]}x{rgb.shape[0]} pixels; an image needs at least {MIN_IMAGE_SIDE} "
                         "on each side")
    return rgb


def on_black(rgb: np.ndarray) -> bool:
    """Whether an image's border is black (the median of its border pixels, every channel)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return bool((np.median(border, 0) == 0).all())


def foreground(rgb: np.ndarray) -> np.ndarray:
    """The image drawn on black (see the module's docstring): itself if its border is black, else each pixel's
    difference from the border's median colour where it exceeds FOREGROUND_LEVEL in some channel, 0 elsewhere."""
    if on_black(rgb):
        return rgb
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    difference = np.abs(rgb.astype(np.int16) - np.median(border, 0).astype(np.int16))
    drawn = difference.max(-1) > FOREGROUND_LEVEL
    return np.where(drawn[..., None], difference, 0).astype(np.uint8)


def ink_box(drawn: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the pixels drawn on black (H, W, 3); None where there are none."""
    rows, cols = np.flatnonzero(drawn.any((1, 2))), np.flatnonzero(drawn.any((0, 2)))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def object_size(drawn: np.ndarray, name: str) -> int:
    """The longer side of an example's foreground box; none, or smaller than MIN_OBJECT_SIDE: a ValueError."""
    box = ink_box(drawn)
    if box is None:
        raise ValueError(f"{name} shows no object: nothing in it stands out from its background (its border's colour)")
    if max(box[2:]) < MIN_OBJECT_SIDE:
        raise ValueError(f"{name}: its object is {box[3]}x{box[2]} pixels, too small to find (at least "
                         f"{MIN_OBJECT_SIDE} on its longer side)")
    return max(box[2:])


def as_reference(drawn: np.ndarray) -> np.ndarray:
    """An example drawn on black as a 32x32 reference: its foreground box rescaled to a longer side of
    REFERENCE_INK pixels, centred."""
    top, left, height, width = ink_box(drawn)
    factor = REFERENCE_INK / max(height, width)
    crop = rescale(drawn[top:top + height, left:left + width], factor)
    reference = np.zeros((REFERENCE_SIZE, REFERENCE_SIZE, 3), np.uint8)
    h, w = crop.shape[:2]
    y, x = (REFERENCE_SIZE - h) // 2, (REFERENCE_SIZE - w) // 2
    reference[y:y + h, x:x + w] = crop
    return reference


def rescale(drawn: np.ndarray, factor: float) -> np.ndarray:
    """An image drawn on black rescaled by ``factor`` (area averaging when it shrinks, bilinear when it grows),
    pixels below RESCALED_LEVEL set to black."""
    if factor == 1:
        return drawn
    height, width = drawn.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    method = Image.Resampling.BOX if factor < 1 else Image.Resampling.BILINEAR
    scaled = np.asarray(Image.fromarray(drawn).resize(size, method))
    return np.where((scaled.max(-1) >= RESCALED_LEVEL)[..., None], scaled, 0).astype(np.uint8)


def tile_starts(length: int) -> list[int]:
    """Where the tiles along one side of ``length`` pixels start: every stride, the last one flush with the end."""
    stride = CANVAS_SIZE - TILE_OVERLAP
    last = max(length - CANVAS_SIZE, 0)
    return sorted(set(range(0, last, stride)) | {last})


def cut_tiles(drawn: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The 96x96 tiles (n, 3, 96, 96) uint8 that cover an image drawn on black (padded with black where it is
    smaller), and each tile's top left (n, 2) as (y, x)."""
    height, width = drawn.shape[:2]
    padded = np.zeros((max(height, CANVAS_SIZE), max(width, CANVAS_SIZE), 3), np.uint8)
    padded[:height, :width] = drawn
    origins = [(y, x) for y in tile_starts(height) for x in tile_starts(width)]
    tiles = np.stack([padded[y:y + CANVAS_SIZE, x:x + CANVAS_SIZE] for y, x in origins])
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous(), torch.tensor(origins)


def stitch(masks: torch.Tensor, origins: torch.Tensor, scaled: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The tiles' masks (n, 96, 96) laid where they were cut (a pixel is in if any tile has it), at the image's
    own ``size`` (height, width)."""
    height, width = scaled
    whole = np.zeros((max(height, CANVAS_SIZE), max(width, CANVAS_SIZE)), bool)
    for mask, (y, x) in zip(masks.numpy(), origins.tolist()):
        whole[y:y + CANVAS_SIZE, x:x + CANVAS_SIZE] |= mask
    whole = whole[:height, :width]
    if (height, width) == size:
        return whole
    return np.asarray(Image.fromarray(whole).resize(size[::-1], Image.Resampling.NEAREST))


def check_boxes(boxes: Sequence[Sequence[float]], shape: tuple[int, int], name: str) -> list[tuple[float, ...]]:
    """Boxes (left, top, width, height) that lie on an image of ``shape`` (height, width) and enclose at least a
    pixel; else a ValueError naming the first that does not."""
    checked = []
    if len(boxes) == 0:
        raise ValueError(f"no boxes on {name}: give at least one box around an object to find")
    for i, box in enumerate(boxes, 1):
        values = tuple(float(v) for v in box)
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"box {i} on {name} must be 4 finite numbers (left, top, width, height), got {box!r}")
        left, top, width, height = values
        if round(width) < 1 or round(height) < 1:
            raise ValueError(f"box {i} on {name} is degenerate ({width:g}x{height:g}): it must enclose at least one "
                             "pixel")
        if left < 0 or top < 0 or left + width > shape[1] or top + height > shape[0]:
            raise ValueError(f"box {i} on {name} ({left:g}, {top:g}, {width:g}, {height:g}) lies outside the image "
                             f"({shape[1]}x{shape[0]} pixels)")
        checked.append(values)
    return checked


def parse_boxes(text: str, name: str = "boxes") -> tuple[list[tuple[float, float, float, float]], list[str] | None]:
    """Boxes as a ``--boxes`` file writes them: one a line, ``LEFT TOP WIDTH HEIGHT [CLASS]`` in pixels, the
    fields separated by spaces, tabs or commas; blank lines and ``#`` comments are skipped. Returns the boxes
    and their classes (None when no line names one; then every line must leave it out). A malformed line is a
    ValueError naming it."""
    boxes, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        if len(fields) not in (4, 5):
            raise ValueError(f"{name} line {number}: expected LEFT TOP WIDTH HEIGHT [CLASS], got {len(fields)} "
                             f"field{'s' * (len(fields) != 1)}: {line.strip()!r}")
        try:
            values = tuple(float(v) for v in fields[:4])
        except ValueError:
            raise ValueError(f"{name} line {number}: LEFT TOP WIDTH HEIGHT must be numbers, got "
                             f"{' '.join(fields[:4])!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{name} line {number}: LEFT TOP WIDTH HEIGHT must be finite, "
                             f"got {' '.join(fields[:4])!r}")
        boxes.append(values)
        labels.append(fields[4] if len(fields) == 5 else None)
    if not boxes:
        raise ValueError(f"{name} holds no boxes: write one a line, LEFT TOP WIDTH HEIGHT [CLASS]")
    if all(label is None for label in labels):
        return boxes, None
    if any(label is None for label in labels):
        missing = labels.index(None) + 1
        raise ValueError(f"{name}: box {missing} names no class while others do; name one for every box or none")
    return boxes, labels


#: Box colours of ``draw``, one per class in turn.
COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def draw(image: ImageLike, found: ImageDetections, name: str = "image") -> Image.Image:
    """The image with its mask tinted and each box outlined, labelled with its class and score."""
    from PIL import ImageDraw

    rgb = read_rgb(image, name).copy()
    tint = np.array([255, 200, 0], np.float32)
    rgb[found.mask] = (0.5 * rgb[found.mask] + 0.5 * tint).astype(np.uint8)
    picture = Image.fromarray(rgb)
    pen = ImageDraw.Draw(picture)
    order = sorted(set(found.classes), key=str)
    width = max(1, round(max(picture.size) / 300))
    for (left, top, w, h), score, label in zip(found.boxes.tolist(), found.scores.tolist(), found.classes):
        colour = COLOURS[order.index(label) % len(COLOURS)]
        pen.rectangle([left, top, left + w, top + h], outline=colour, width=width)
        pen.text((left + 1, max(top - 11, 0)), f"{label} {score:.2f}", fill=colour)
    return picture
