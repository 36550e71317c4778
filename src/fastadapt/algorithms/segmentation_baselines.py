"""Baselines of one-shot segmentation in clutter, with nothing to train: template matching, and a pixel floor.

* template-matching: normalised cross-correlation (NCC) of the reference over the canvas, both as ink maps
  (drawn or not: the reference's colour is not the target's), for a grid of transforms of the reference:
  each axis scaled by 0.5, 0.71, 1, 1.41 and 2, rotated by -20, -10, 0, 10 and 20 degrees (125 templates;
  the target is scaled by 0.5-2 per axis and rotated and sheared independently of its reference). Each
  template is the transformed reference thresholded at 0.5 and cut to its ink box, and it is matched over every
  position where that box lies on the canvas. The best (template, position) gives the box (its score: the NCC)
  and the mask guess: the template pasted there, less the pixels where the canvas has no ink (the target is
  drawn last, so every pixel of it is inked). The correlations are computed for a whole batch of canvases
  by FFT (the sums a conv2d would take, with a kernel per template, and the window means and variances;
  tested against scikit-image's ``match_template``).
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
    number of images: each frame's conjugate spectrum, its box's, the template's mean, norm and area
    (..., K, 1, 1), -inf at the shifts where the box leaves the image and 0 elsewhere (..., K, H, W), and whether
    every template is 0/1 (then so are the sums)."""

    templates: Templates
    spectrum: torch.Tensor
    box_spectrum: torch.Tensor
    mean: torch.Tensor
    norm: torch.Tensor
    area: torch.Tensor
    outside: torch.Tensor
    binary: bool

    def select(self, index: Any) -> "TemplateBank":
        """The bank of the references ``index`` picks (an index of the leading dimensions)."""
        return TemplateBank(Templates(self.templates.ink[index], self.templates.box[index]),
                            *(field[index] for field in self[1:-1]), self.binary)


def template_bank(templates: torch.Tensor, boxes: torch.Tensor) -> TemplateBank:
    """The ``TemplateBank`` of templates (..., K, H, W), template k being the box ``boxes[..., k, :]`` =
    (top, left, h, w) of its frame (zero elsewhere)."""
    height, width = templates.shape[-2:]
    top, left, h, w = boxes.unbind(-1)  # (..., K) each
    rows = torch.arange(height, device=templates.device)
    cols = torch.arange(width, device=templates.device)
    row_in = ((rows >= top[..., None]) & (rows < (top + h)[..., None])).to(templates.dtype)  # the box: rows x columns
    col_in = ((cols >= left[..., None]) & (cols < (left + w)[..., None])).to(templates.dtype)
    area = (h * w).clamp(min=1).to(templates.dtype)[..., None, None]
    total = templates.sum((-2, -1), keepdim=True)
    mean = total / area
    norm = (templates.square().sum((-2, -1), keepdim=True) - total * mean).clamp(min=0).sqrt()
    # The box's spectrum is its rows' times its columns' (it is their outer product).
    box_spectrum = (torch.fft.fft(row_in)[..., :, None] * torch.fft.rfft(col_in)[..., None, :]).conj()
    row_fits = ((rows + top[..., None]) % height + h[..., None] <= height) & (h[..., None] > 0)
    col_fits = ((cols + left[..., None]) % width + w[..., None] <= width) & (w[..., None] > 0)
    binary = bool(((templates == 0) | (templates == 1)).all())
    fits = row_fits[..., :, None] & col_fits[..., None, :]
    outside = torch.zeros(fits.shape, dtype=templates.dtype, device=templates.device).masked_fill_(~fits, -math.inf)
    return TemplateBank(Templates(templates, boxes), torch.fft.rfft2(templates).conj(), box_spectrum, mean, norm,
                        area, outside, binary)


def ncc(images: torch.Tensor, templates: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of each image (tasks, H, W) with each of its templates (tasks, K, H, W),
    template k being the box ``boxes[..., k, :]`` = (top, left, h, w) of its frame (zero elsewhere).

    Returns (tasks, K, H, W): at (y, x), the frame shifted by (y, x) (cyclically), that is the correlation of
    the template's box with the image's window whose top left is ((y + top) mod H, (x + left) mod W); -inf
    where that window leaves the image; 0 where the window or the template is flat. For a box at the frame's
    top left this is scikit-image's ``match_template`` (``pad_input=False``) on the valid positions."""
    return bank_ncc(template_bank(templates, boxes), images)


def bank_ncc(bank: TemplateBank, images: torch.Tensor) -> torch.Tensor:
    """``ncc`` with templates already in a bank (..., K, H, W), of images (..., H, W) whose leading dimensions
    broadcast with the bank's: (..., K, H, W). The sums are circular correlations by FFT, exact wherever the
    window does not wrap round, that is at every valid position; for 0/1 images and templates they are rounded
    to the integers they are."""
    height, width = images.shape[-2:]
    binary = bank.binary and bool(((images == 0) | (images == 1)).all())
    spectrum = torch.fft.rfft2(images)[..., None, :, :]
    raw = torch.fft.irfft2(spectrum * bank.spectrum, s=(height, width))
    window_sum = torch.fft.irfft2(spectrum * bank.box_spectrum, s=(height, width))
    if binary:  # 0/1 sums are integers, and a 0/1 image is its own square: the variance is n (1 - n / area)
        raw.round_()
        window_sum.round_()
        variance = window_sum * (1 - window_sum / bank.area)
    else:
        window_square = torch.fft.irfft2(torch.fft.rfft2(images.square())[..., None, :, :] * bank.box_spectrum,
                                         s=(height, width))
        variance = window_square - window_sum.square() / bank.area
    numerator = raw.sub_(window_sum.mul_(bank.mean))  # the correlation with the template less its mean
    denominator = variance.clamp_(min=0).sqrt_().mul_(bank.norm)
    flat = denominator <= 1e-6 * bank.area.sqrt()
    return numerator.div_(denominator).masked_fill_(flat, 0.0).add_(bank.outside)


@functools.lru_cache(maxsize=4)
def template_grid(frame: int, device: str) -> torch.Tensor:
    """Where each transform of the grid reads the reference, as ``affine_grid`` gives it: (K, frame, frame, 2),
    the same for every reference, so computed once per frame size and device."""
    maps = []
    for angle in ROTATIONS:
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        for sx in SCALES:
            for sy in SCALES:
                # Forward map: scale the reference's axes, then rotate; affine_grid wants its inverse.
                forward = torch.tensor([[c * sx, -s * sy], [s * sx, c * sy]], dtype=torch.float64)
                maps.append(torch.linalg.inv(forward))
    inverse = torch.stack(maps).to(device, torch.float32)  # (K, 2, 2)
    theta = torch.cat([inverse, torch.zeros(len(maps), 2, 1, device=device)], 2)
    return F.affine_grid(theta, [len(maps), 1, frame, frame], align_corners=False)


def transformed_templates(references: torch.Tensor, frame: int) -> Templates:
    """Every transform of the grid of each reference's ink (tasks, h, w) bool, thresholded at 0.5 after
    bilinear resampling about the reference's centre, in the middle of a ``frame`` x ``frame`` frame."""
    tasks, side = references.shape[0], references.shape[-1]
    pad = (frame - side) // 2
    padded = F.pad(references.float()[:, None], (pad, frame - side - pad, pad, frame - side - pad))
    grid = template_grid(frame, str(references.device))  # (K, frame, frame, 2)
    count = len(grid)
    # Every template's sampling points as one tall grid: each reference is read once, not copied per template.
    drawn = F.grid_sample(padded, grid.view(1, count * frame, frame, 2).expand(tasks, -1, -1, -1), mode="bilinear",
                          align_corners=False).view(tasks, count, frame, frame) > 0.5
    rows, cols = drawn.any(-1), drawn.any(-2)
    index = torch.arange(frame, device=references.device)
    top = torch.where(rows, index, frame).amin(-1) % frame  # 0 for an empty template
    left = torch.where(cols, index, frame).amin(-1) % frame
    height = (torch.where(rows, index + 1, 0).amax(-1) - top).clamp(min=0)
    width = (torch.where(cols, index + 1, 0).amax(-1) - left).clamp(min=0)
    return Templates(drawn.float(), torch.stack([top, left, height, width], -1))


def best_match(scores: torch.Tensor, boxes: torch.Tensor) -> Match:
    """The best (template, shift) of each canvas from ``ncc``'s scores (tasks, K, H, W) and template boxes. NCC
    ignores scale, so a template smaller than the target may match a part of it as well as the whole template
    matches the whole (an L's corner is a smaller L): among (nearly) equal scores the largest box wins, by a
    bonus of at most TIE_BREAK for a box the size of the canvas."""
    tasks, count, height, width = scores.shape
    area = (boxes[..., 2] * boxes[..., 3]).to(scores.dtype) / (height * width)
    best = (scores + TIE_BREAK * area[..., None, None]).view(tasks, -1).argmax(1)
    template, position = best // (height * width), best % (height * width)
    shift = torch.stack([position // width, position % width], 1)
    top, left, h, w = boxes[torch.arange(tasks), template].unbind(1)
    box = torch.stack([(shift[:, 1] + left) % width, (shift[:, 0] + top) % height, w, h], 1)
    return Match(template, shift, box, scores.view(tasks, -1).gather(1, best[:, None])[:, 0])


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
        return template_bank(templates.ink, templates.box)

    def find(self, prepared: TemplateBank, canvases: torch.Tensor, count: int, min_score: float) -> Found:
        """The peaks of the best template's NCC over the shifts, each as that template's box; the mask: the
        templates pasted there, on the canvas's ink. Scores carry ``best_match``'s bonus (at most TIE_BREAK) for
        the template's size, so that of two equal matches the whole object comes before its part."""
        drawn = ink(canvases)
        height, width = drawn.shape[-2:]
        found = []
        for r in range(len(prepared.templates.ink)):
            bank = prepared.select(slice(r, r + 1))
            area = (bank.templates.box[..., 2] * bank.templates.box[..., 3]).to(bank.mean.dtype) / (height * width)
            for chunk in drawn.split(CHUNK):
                scores = bank_ncc(bank, chunk.to(bank.mean.dtype)).add_(TIE_BREAK * area[..., None, None])
                best, template = scores.max(-3)  # (canvases, H, W)
                values, index = peaks(best, count)
                template = template.flatten(1).gather(1, index)
                shift = torch.stack([index // width, index % width], -1)
                top, left, h, w = bank.templates.box[0][template].unbind(-1)
                boxes = torch.stack([(shift[..., 1] + left) % width, (shift[..., 0] + top) % height, w, h], -1)
                frames = shifted(bank.templates.ink[0][template] > 0, shift)  # (canvases, count, H, W)
                keep = values >= min_score
                masks = (frames & keep[..., None, None]).any(1) & chunk
                found.append((boxes.to(values.dtype), values, masks))
        boxes, scores, masks = (torch.cat(parts).view(len(prepared.templates.ink), len(canvases), *parts[0].shape[1:])
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
