"""Baselines of one-shot segmentation in clutter, with nothing to train: template matching, and a pixel floor.

* template-matching: normalised cross-correlation (NCC) of the reference over the canvas, both as ink maps
  (drawn or not: the reference's colour is not the target's), for a grid of transforms of the reference:
  each axis scaled by 0.5, 0.71, 1, 1.41 and 2, rotated by -20, -10, 0, 10 and 20 degrees (125 templates;
  the target is scaled by 0.5-2 per axis and rotated and sheared independently of its reference). Each
  template is the transformed reference thresholded at 0.5 and cut to its ink box, and it is matched over every
  position where that box lies on the canvas. The best (template, position) gives the box (its score: the NCC)
  and the mask guess: the template pasted there, less the pixels where the canvas has no ink (the target is
  drawn last, so every pixel of it is inked). The correlations with the templates are computed by FFT (the
  sums a conv2d would take, with a kernel per template), the windows' sums (their means and variances) from
  running sums; tested against scikit-image's ``match_template``. Ink maps are 0/1, so the sums are exact
  integers and the NCC is exact to float32 rounding.
* ink-floor: every inked pixel of the canvas. It knows ink from background and nothing of the reference: the
  floor a method that reads the reference must beat.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from fastadapt.algorithms.segmentation import (Detection, Found, SegmentationLearner, check_segmentation_inputs,
                                               ink, peaks)
from fastadapt.tasks.cluttered_omniglot import CANVAS_SHAPE
from fastadapt.algorithms.spec import MethodSpec

#: The grid of transforms (per axis scales, rotations in degrees).
SCALES = (0.5, 2 ** -0.5, 1.0, 2 ** 0.5, 2.0)
ROTATIONS = (-20.0, -10.0, 0.0, 10.0, 20.0)
#: The most a template's size adds to its score, to break ties between scales (see ``best_match``).
TIE_BREAK = 1e-4
#: Canvases matched at once: the templates and their spectra of a chunk are alive together.
CHUNK = 8


class Templates(NamedTuple):
    """A reference's transforms, each in a frame the canvas's size: ``ink`` (tasks, K, H, W) float, zero outside
    its box; ``box`` (tasks, K, 4) the box's top, left, height and width in the frame."""

    ink: torch.Tensor
    box: torch.Tensor


class Match(NamedTuple):
    """The best template of each canvas: its index, the shift that lays its frame on the canvas (y, x), the box
    on the canvas (left, top, width, height) and the NCC there."""

    template: torch.Tensor
    shift: torch.Tensor
    box: torch.Tensor
    score: torch.Tensor


class TemplateBank(NamedTuple):
    """What the NCC needs of templates (..., K, H, W) in frames of the image's size, computed once for any
    number of images: each frame's conjugate spectrum, the template's mean, norm and area (..., K, 1, 1), -inf at
    the shifts where the box leaves the image and 0 elsewhere, as rows (..., K, H, 1) and columns (..., K, 1, W)
    to be added (a shift is outside when its row or its column is), and whether every template is 0/1 (then so
    are the sums)."""

    templates: Templates
    spectrum: torch.Tensor
    mean: torch.Tensor
    norm: torch.Tensor
    area: torch.Tensor
    rows_outside: torch.Tensor
    cols_outside: torch.Tensor
    binary: bool

    def select(self, index: Any) -> "TemplateBank":
        """The bank of the references ``index`` picks (an index of the leading dimensions)."""
        return TemplateBank(Templates(self.templates.ink[index], self.templates.box[index]),
                            *(field[index] for field in self[1:-1]), self.binary)


def template_bank(templates: torch.Tensor, boxes: torch.Tensor, binary: bool | None = None) -> TemplateBank:
    """The ``TemplateBank`` of templates (..., K, H, W), template k being the box ``boxes[..., k, :]`` =
    (top, left, h, w) of its frame (zero elsewhere); ``binary``: whether they are all 0/1 (None: look)."""
    height, width = templates.shape[-2:]
    top, left, h, w = boxes.unbind(-1)  # (..., K) each
    rows = torch.arange(height, device=templates.device)
    cols = torch.arange(width, device=templates.device)
    area = (h * w).clamp(min=1).to(templates.dtype)[..., None, None]
    total = templates.sum((-2, -1), keepdim=True)
    mean = total / area
    norm = (templates.square().sum((-2, -1), keepdim=True) - total * mean).clamp(min=0).sqrt()
    row_fits = ((rows + top[..., None]) % height + h[..., None] <= height) & (h[..., None] > 0)
    col_fits = ((cols + left[..., None]) % width + w[..., None] <= width) & (w[..., None] > 0)
    if binary is None:
        binary = bool(((templates == 0) | (templates == 1)).all())
    rows_outside, cols_outside = (torch.where(fits, 0.0, -math.inf).to(templates.dtype)
                                  for fits in (row_fits, col_fits))
    # The transposed frames' spectra, half along their rows, contiguous (..., K, W // 2 + 1, H): torch's inverse
    # FFT of such a batch is about 1.5 times faster than of the plain half spectra (..., K, H, W // 2 + 1), and its
    # output, laid out in memory as (..., K, H, W), is the correlations (``bank_ncc``).
    spectrum = torch.fft.rfft2(templates.transpose(-1, -2), dim=(-1, -2)).conj().resolve_conj().contiguous()
    return TemplateBank(Templates(templates, boxes), spectrum, mean, norm, area, rows_outside[..., None],
                        cols_outside[..., None, :], binary)


def ncc(images: torch.Tensor, templates: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of each image (tasks, H, W) with each of its templates (tasks, K, H, W),
    template k being the box ``boxes[..., k, :]`` = (top, left, h, w) of its frame (zero elsewhere).

    Returns (tasks, K, H, W): at (y, x), the frame shifted by (y, x) (cyclically), that is the correlation of
    the template's box with the image's window whose top left is ((y + top) mod H, (x + left) mod W); -inf
    where that window leaves the image; 0 where the window or the template is flat. For a box at the frame's
    top left this is scikit-image's ``match_template`` (``pad_input=False``) on the valid positions."""
    return bank_ncc(template_bank(templates, boxes), images)


def bank_ncc(bank: TemplateBank, images: torch.Tensor, bonus: torch.Tensor | None = None) -> torch.Tensor:
    """``ncc`` with templates already in a bank (..., K, H, W), of images (..., H, W) whose leading dimensions
    broadcast with the bank's: (..., K, H, W); ``bonus`` (..., K), if given, is added to each template's scores
    (``find``'s tie-break). The correlations with the templates are circular, by FFT, exact wherever the window
    does not wrap round, that is at every valid position (for 0/1 images and templates rounded to the integers
    they are); the windows' sums are ``window_sums``."""
    height, width = images.shape[-2:]
    binary = bank.binary and bool(((images == 0) | (images == 1)).all())
    spectrum = torch.fft.rfft2(images.transpose(-1, -2), dim=(-1, -2)).contiguous()[..., None, :, :]
    raw = torch.fft.irfft2(spectrum * bank.spectrum, s=(height, width), dim=(-1, -2)).transpose(-1, -2)
    window_sum = window_sums(images, bank.templates.box)
    rows_outside = bank.rows_outside if bonus is None else bank.rows_outside + bonus[..., None, None]
    if binary:
        # A 0/1 image is its own square: the NCC is (raw - n mean) / (norm sqrt(n (area - n) / area)), n the
        # window's sum. The only non-finite quotients are where it is 0 / 0 or x / 0 (n = 0, n = area, or a flat
        # template), which ``ncc`` scores 0.
        raw.round_()
        inverse = torch.sub(bank.area, window_sum).mul_(window_sum).rsqrt_()
        numerator = raw.sub_(window_sum.mul_(bank.mean))  # the correlation with the template less its mean
        scale = bank.area.sqrt() / bank.norm
        scores = numerator.mul_(inverse).mul_(scale).nan_to_num_(0.0, 0.0, 0.0)
        return scores.add_(rows_outside).add_(bank.cols_outside)
    variance = window_sums(images.square(), bank.templates.box) - window_sum.square() / bank.area
    numerator = raw.sub_(window_sum.mul_(bank.mean))
    denominator = variance.clamp_(min=0).sqrt_().mul_(bank.norm)
    flat = denominator <= 1e-6 * bank.area.sqrt()
    return numerator.div_(denominator).masked_fill_(flat, 0.0).add_(rows_outside).add_(bank.cols_outside)


def window_sums(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The sums of images (..., H, W) over the windows of boxes (..., K, 4) = (top, left, h, w), placed as ``ncc``
    places its scores: at (y, x) the h x w window whose top left is ((y + top) mod H, (x + left) mod W), cut at
    the image's bottom and right edges where it leaves the image (where ``ncc`` scores -inf). Returns
    (..., K, H, W), the leading dimensions broadcast. From running sums, not FFTs: first the sums of w columns
    at every place for each distinct (left, w), then of h rows of those for each box, every step a selection of
    whole rows of a table. Exact for 0/1 images (integers below 2 ** 24); other images are summed in float64."""
    height, width = images.shape[-2:]
    lead = torch.broadcast_shapes(images.shape[:-2], boxes.shape[:-2])
    count = boxes.shape[-2]
    images = images.expand(*lead, height, width).reshape(-1, height, width)
    boxes = boxes.expand(*lead, count, 4).reshape(-1, count, 4)
    sums = [_window_sums(image, box) for image, box in zip(images, boxes)]
    stacked = sums[0][None] if len(sums) == 1 else torch.stack(sums)
    return stacked.view(*lead, count, height, width)


def _window_sums(image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``window_sums`` of one image (H, W) and boxes (K, 4): (K, H, W)."""
    height, width = image.shape
    summed = image if bool(((image == 0) | (image == 1)).all()) else image.double()
    top, left, h, w = boxes.unbind(-1)
    bands, band = torch.unique(left * (width + 1) + w, return_inverse=True)  # the distinct (left, w)
    band_left, band_width = bands // (width + 1), bands % (width + 1)
    # Row c of ``before``: the running sum of the image's columns before c, its first entry 0.
    before = F.pad(summed.t().cumsum(0), (1, 0, 1, 0))  # (W + 1, H + 1)
    first = (torch.arange(width, device=image.device) + band_left[:, None]) % width  # (bands, W): the first column
    last = (first + band_width[:, None]).clamp(max=width)
    columns = before.index_select(0, last.flatten()).sub_(before.index_select(0, first.flatten()))  # (bands W, H + 1)
    # Running sums of those down the rows, rows first in memory: entry (band, r, x) sums the rows before r.
    below = columns.view(len(bands), width, height + 1).transpose(1, 2).contiguous().cumsum_(1).view(-1, width)
    first = (torch.arange(height, device=image.device) + top[:, None]) % height  # (K, H): the first row
    last = (first + h[:, None]).clamp(max=height)
    base = band[:, None] * (height + 1)
    sums = below.index_select(0, (base + last).flatten()).sub_(below.index_select(0, (base + first).flatten()))
    return sums.view(len(boxes), height, width).to(image.dtype)


@functools.lru_cache(maxsize=1)
def forward_maps() -> torch.Tensor:
    """The grid's transforms (K, 2, 2) float64, each acting on (column, row) offsets from the reference's centre:
    its axes scaled, then rotated."""
    maps = []
    for angle in ROTATIONS:
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        for sx in SCALES:
            for sy in SCALES:
                maps.append(torch.tensor([[c * sx, -s * sy], [s * sx, c * sy]], dtype=torch.float64))
    return torch.stack(maps)


@functools.lru_cache(maxsize=4)
def template_grid(frame: int, device: str) -> torch.Tensor:
    """Where each transform of the grid reads the reference, as ``affine_grid`` gives it: (K, frame, frame, 2),
    the same for every reference, so computed once per frame size and device."""
    inverse = torch.stack([torch.linalg.inv(forward) for forward in forward_maps()]).to(device, torch.float32)
    theta = torch.cat([inverse, torch.zeros(len(inverse), 2, 1, device=device)], 2)
    return F.affine_grid(theta, [len(inverse), 1, frame, frame], align_corners=False)


def ink_reach(references: torch.Tensor, frame: int) -> tuple[int, int, int, int] | None:
    """The rows [r0, r1) and columns [c0, c1) of a ``frame`` x ``frame`` frame outside which no transform of the
    grid draws any of the references' ink (tasks, h, w) bool, centred in the frame; None where they have none.
    A transform reads the frame's pixel at inverse(p - centre) + centre, and bilinear sampling is 0 unless some
    inked pixel lies within 1 of that point, so the ink's box grown by 1 pixel, mapped forward, bounds what is
    drawn (1 pixel more each side for rounding)."""
    side = references.shape[-1]
    rows, cols = references.any(0).any(1), references.any(0).any(0)
    if not rows.any():
        return None
    pad, centre = (frame - side) // 2, (frame - 1) / 2
    found = [present.nonzero()[:, 0].tolist() for present in (cols, rows)]
    low = torch.tensor([f[0] for f in found], dtype=torch.float64) + pad - 1 - centre  # (x, y): the grown box
    high = torch.tensor([f[-1] for f in found], dtype=torch.float64) + pad + 1 - centre
    corners = torch.stack([torch.stack([x, y]) for x in (low[0], high[0]) for y in (low[1], high[1])], 1)
    reached = forward_maps() @ corners + centre  # (K, 2, 4)
    start = (reached.amin((0, 2)).floor() - 1).clamp(min=0).long().tolist()
    stop = (reached.amax((0, 2)).ceil() + 2).clamp(max=frame).long().tolist()
    return start[1], stop[1], start[0], stop[0]


def transformed_templates(references: torch.Tensor, frame: int) -> Templates:
    """Every transform of the grid of each reference's ink (tasks, h, w) bool, thresholded at 0.5 after
    bilinear resampling about the reference's centre, in the middle of a ``frame`` x ``frame`` frame. Only the
    part of the frame the ink can reach (``ink_reach``) is sampled: the rest is 0 in any case."""
    tasks, side = references.shape[0], references.shape[-1]
    pad = (frame - side) // 2
    grid = template_grid(frame, str(references.device))  # (K, frame, frame, 2)
    count = len(grid)
    drawn = torch.zeros(tasks, count, frame, frame, device=references.device)
    rows = torch.zeros(tasks, count, frame, dtype=torch.bool, device=references.device)  # which rows have ink
    cols = torch.zeros(tasks, count, frame, dtype=torch.bool, device=references.device)
    reach = ink_reach(references, frame)
    if reach is not None:
        r0, r1, c0, c1 = reach
        padded = F.pad(references.float()[:, None], (pad, frame - side - pad, pad, frame - side - pad))
        # Every template's sampling points as one tall grid: each reference is read once, not copied per template.
        points = grid[:, r0:r1, c0:c1].reshape(1, count * (r1 - r0), c1 - c0, 2).expand(tasks, -1, -1, -1)
        sampled = F.grid_sample(padded, points, mode="bilinear", align_corners=False)
        sampled = sampled.view(tasks, count, r1 - r0, c1 - c0)
        drawn[..., r0:r1, c0:c1] = sampled > 0.5
        rows[..., r0:r1], cols[..., c0:c1] = sampled.amax(-1) > 0.5, sampled.amax(-2) > 0.5
    index = torch.arange(frame, device=references.device)
    top = torch.where(rows, index, frame).amin(-1) % frame  # 0 for an empty template
    left = torch.where(cols, index, frame).amin(-1) % frame
    height = (torch.where(rows, index + 1, 0).amax(-1) - top).clamp(min=0)
    width = (torch.where(cols, index + 1, 0).amax(-1) - left).clamp(min=0)
    return Templates(drawn, torch.stack([top, left, height, width], -1))


def best_match(scores: torch.Tensor, boxes: torch.Tensor) -> Match:
    """The best (template, shift) of each canvas from ``ncc``'s scores (tasks, K, H, W) and template boxes. NCC
    ignores scale, so a template smaller than the target may match a part of it as well as the whole template
    matches the whole (an L's corner is a smaller L): among (nearly) equal scores the largest box wins, by a
    bonus of at most TIE_BREAK for a box the size of the canvas."""
    tasks, count, height, width = scores.shape
    area = (boxes[..., 2] * boxes[..., 3]).to(scores.dtype) / (height * width)
    best = (scores + TIE_BREAK * area[..., None, None]).reshape(tasks, -1).argmax(1)
    template, position = best // (height * width), best % (height * width)
    shift = torch.stack([position // width, position % width], 1)
    top, left, h, w = boxes[torch.arange(tasks), template].unbind(1)
    box = torch.stack([(shift[:, 1] + left) % width, (shift[:, 0] + top) % height, w, h], 1)
    return Match(template, shift, box, scores.reshape(tasks, -1).gather(1, best[:, None])[:, 0])


class TemplateMatching(SegmentationLearner):
    """NCC template matching over a grid of scales and rotations (see the module's docstring)."""

    #: the NCC a match needs by default: it maximises the F1 of the boxes on 300 val-one-shot canvases
    #: (benchmarks/detect_threshold.py, docs/results.md)
    min_score = 0.55

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> torch.Tensor:
        return references

    def predict(self, adapted: torch.Tensor, canvases: torch.Tensor) -> torch.Tensor:
        masks = torch.cat([self.match(references, chunk)[0] for references, chunk in
                           zip(adapted.split(CHUNK), canvases.split(CHUNK))])
        return torch.full(masks.shape, -math.inf, device=masks.device).masked_fill(masks, math.inf)

    def detect(self, references: torch.Tensor, canvases: torch.Tensor) -> Detection:
        """The best match's box, scored by its NCC."""
        check_segmentation_inputs(references, canvases)
        found = [self.match(r, c)[1] for r, c in zip(references.split(CHUNK), canvases.split(CHUNK))]
        return Detection(torch.cat([f.box for f in found]), torch.cat([f.score for f in found]))

    def match(self, references: torch.Tensor, canvases: torch.Tensor) -> tuple[torch.Tensor, Match]:
        """Each canvas's mask guess (tasks, H, W) bool and its best ``Match``."""
        drawn = ink(canvases)
        templates = transformed_templates(ink(references), canvases.shape[-1])
        found = best_match(ncc(drawn.float(), templates.ink, templates.box), templates.box)
        chosen = templates.ink[torch.arange(len(drawn)), found.template] > 0
        # Lay the chosen template's frame on the canvas, shifted as it matched (cyclically; its box fits).
        return shifted(chosen, found.shift) & drawn, found

    def prepare(self, references: torch.Tensor) -> TemplateBank:
        """The references' templates and their spectra, in frames of the canvas's size."""
        templates = transformed_templates(ink(references), CANVAS_SHAPE[-1])
        return template_bank(templates.ink, templates.box, binary=True)

    def find(self, prepared: TemplateBank, canvases: torch.Tensor, count: int, min_score: float) -> Found:
        """The peaks of the best template's NCC over the shifts, each as that template's box; the mask: the
        templates pasted there, on the canvas's ink. Scores carry ``best_match``'s bonus (at most TIE_BREAK) for
        the template's size, so that of two equal matches the whole object comes before its part. One canvas at
        a time: its scores, (K, H, W), are 4.6 MB at 96x96."""
        drawn = ink(canvases)
        height, width = drawn.shape[-2:]
        dtype = prepared.mean.dtype
        found = []
        for r in range(len(prepared.templates.ink)):
            bank = prepared.select(slice(r, r + 1))
            boxes = bank.templates.box[0]
            bonus = TIE_BREAK * (boxes[:, 2] * boxes[:, 3]).to(dtype) / (height * width)
            for canvas in drawn:
                scores = bank_ncc(bank, canvas[None].to(dtype), bonus)[0]  # (K, H, W)
                values, index = peaks(scores.amax(0), count)
                template = scores.flatten(1)[:, index].argmax(0)  # the best template at each peak, the first of equals
                shift = torch.stack([index // width, index % width], -1)
                top, left, h, w = boxes[template].unbind(-1)
                frames = shifted(bank.templates.ink[0][template] > 0, shift)  # (count, H, W)
                masks = (frames & (values >= min_score)[:, None, None]).any(0) & canvas
                found.append((torch.stack([(shift[:, 1] + left) % width, (shift[:, 0] + top) % height, w, h], -1)
                              .to(dtype), values, masks))
        boxes, scores, masks = (torch.stack(parts).view(len(prepared.templates.ink), len(canvases), *parts[0].shape)
                                for parts in zip(*found))
        return Found(boxes, scores, masks)


def shifted(frames: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Frames (..., H, W) each moved by its shift (..., 2) = (down, right), cyclically."""
    height, width = frames.shape[-2:]
    rows = (torch.arange(height, device=frames.device) - shift[..., 0, None]) % height  # (..., H)
    cols = (torch.arange(width, device=frames.device) - shift[..., 1, None]) % width
    moved = frames.gather(-2, rows[..., :, None].expand(frames.shape))
    return moved.gather(-1, cols[..., None, :].expand(frames.shape))


class InkFloor(SegmentationLearner):
    """Every inked pixel of the canvas: the floor (see the module's docstring)."""

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> None:
        return None

    def predict(self, adapted: None, canvases: torch.Tensor) -> torch.Tensor:
        drawn = ink(canvases)
        return torch.full(drawn.shape, -math.inf, device=drawn.device).masked_fill(drawn, math.inf)


SPECS = (MethodSpec("template-matching", TemplateMatching, lambda context: TemplateMatching(), segmentation=True),
         MethodSpec("ink-floor", InkFloor, lambda context: InkFloor(), segmentation=True))
