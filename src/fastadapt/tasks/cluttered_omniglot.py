"""One-shot segmentation in clutter as a task: find the reference's character on a cluttered canvas.

A task is a ``SegmentationBatch``: canvases (96x96 RGB, N Omniglot drawings,
the target drawn last), 32x32 references (the target's drawing alone, re-drawn
with a new rotation, shear and colour, centred), the target's mask and its box.
``ClutteredOmniglotTasks`` draws them on the fly, a whole batch at once in
torch, from the distribution of the official generator
(``fastadapt.datasets.cluttered_omniglot``, which reproduces the official
canvases exactly but one at a time in Python, too slowly to feed training).

The batched version composes each drawing's two nearest-neighbour resamplings
(the affine transform at 105-pixel scale, then the shrink to 32/105) into one
affine map from canvas pixels to glyph pixels, the map ``affine_grid`` would
build, and samples the glyph at its floor, as ``grid_sample(mode="nearest")``
does; it indexes one shared bank of glyphs rather than calling grid_sample,
which would need a 105x105 copy of the glyph per drawing. Everything else is
the official rules: the crop to the ink that stops before the last inked row
and column, a redraw when nothing is left, positions uniform over those that
keep the drawing on the canvas, colours floor(255 * uniform) per channel, the
reference clipped to 32x32 when it is larger.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from fastadapt.datasets.cluttered_omniglot import (CANVAS_SIZE, MAX_ROTATION, MAX_SCALE, MAX_SHEAR, REFERENCE_SIZE,
                                                   SPLITS, generate_job, job_seeds)
from fastadapt.tasks.base import TensorBatch

_GLYPH = 105
_SHRINK = 32 / 105


@dataclass
class SegmentationBatch(TensorBatch):
    """canvases (B, 3, 96, 96) uint8, references (B, 3, 32, 32) uint8, masks (B, 96, 96) bool (the target's
    pixels), boxes (B, 4) int64 as (left, top, width, height) of the target's cropped drawing."""

    canvases: torch.Tensor
    references: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor

    # each canvas with its reference is a task (the trainer's and evaluation's word)


#: The per-task loss of segmentation tasks (``algorithms.metrics``): scored by mask IoU.
SEGMENTATION_LOSS = "segmentation"
#: What a segmentation network reads: a canvas (channels, height, width); references are REFERENCE_SHAPE.
CANVAS_SHAPE = (3, CANVAS_SIZE, CANVAS_SIZE)
REFERENCE_SHAPE = (3, REFERENCE_SIZE, REFERENCE_SIZE)


class ClutteredOmniglotTasks:
    """Canvases of ``characters`` drawings (``characters - 1`` distractors, then the target) from ``glyphs``,
    a (characters, drawings, 105, 105) bool tensor (ink = True, from ``glyph_tensor(load_glyphs(split))``),
    using drawings ``drawers[0]`` to ``drawers[1] - 1`` of each character."""

    loss = SEGMENTATION_LOSS
    output_size = 1  # one mask
    input_shape = CANVAS_SHAPE

    def __init__(self, glyphs: torch.Tensor, characters: int, drawers: tuple[int, int] = (0, 10)) -> None:
        if glyphs.dtype != torch.bool or glyphs.dim() != 4 or tuple(glyphs.shape[2:]) != (_GLYPH, _GLYPH):
            raise ValueError(f"glyphs must be a bool tensor (characters, drawings, 105, 105), got "
                             f"{glyphs.dtype} {tuple(glyphs.shape)}")
        if not 0 <= drawers[0] < drawers[1] <= glyphs.shape[1]:
            raise ValueError(f"drawers {drawers} is not a range within the {glyphs.shape[1]} drawings")
        if characters < 1:
            raise ValueError(f"characters must be at least 1 (the target), got {characters}")
        self.characters = characters
        chosen = glyphs[:, drawers[0]:drawers[1]]
        self.num_characters, self.num_drawers = chosen.shape[:2]
        flat = chosen.reshape(-1, _GLYPH, _GLYPH)
        # A zero border around each glyph: a sample that falls outside is clamped onto it and reads no ink.
        self.bank = torch.nn.functional.pad(flat.to(torch.uint8), (1, 1, 1, 1)).reshape(-1)
        cols, rows = flat.any(1), flat.any(2)
        if not bool(rows.any(1).all()):
            raise ValueError("every drawing needs ink")
        index = torch.arange(_GLYPH)
        # Each glyph's ink box [x0, x1] x [y0, y1] (pixel edges): only its image needs rendering.
        self.ink_boxes = torch.stack([_first(cols, index), _last(cols, index) + 1,
                                      _first(rows, index), _last(rows, index) + 1], 1).double()

    def sample(self, batch_size: int, generator: torch.Generator) -> SegmentationBatch:
        """``batch_size`` canvases with their references, masks and boxes, from ``generator`` alone."""
        n = self.characters
        glyph = self._random_glyphs(batch_size * n, generator).view(batch_size, n)
        distractor = (torch.arange(n) != n - 1).expand(batch_size, n)  # slot n - 1 of each canvas is the target
        canvases, winner, boxes, glyph = self.canvases(glyph, generator, distractor)
        return SegmentationBatch(canvases, self.references(glyph[:, -1], generator), winner == n - 1, boxes[:, -1])

    def canvases(self, glyph: torch.Tensor, generator: torch.Generator, renew: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canvases of the glyphs (canvases, slots), drawn in slot order (a later slot covers an earlier one),
        each transformed, coloured and placed at random (a failed draw: a new glyph where ``renew``, see
        ``draw``). Returns the canvases (B, 3, 96, 96) uint8, which slot each pixel shows (B, 96, 96; -1: none),
        each drawing's box (B, slots, 4) as (left, top, width, height), and the glyphs finally drawn."""
        batch_size, n = glyph.shape
        pieces, size, colour, glyph = self.draw(glyph.flatten(), MAX_SCALE, generator, renew.flatten())
        position = (torch.rand(batch_size * n, 2, generator=generator, dtype=torch.float64)
                    * (CANVAS_SIZE + 1 - size)).long()
        winner = torch.full((batch_size * CANVAS_SIZE * CANVAS_SIZE + 1,), -1, dtype=torch.long)
        for index, ink, crop in pieces:
            paint(winner, CANVAS_SIZE, index // n, index % n, position[index] - crop[:, :2], crop, ink)
        winner = winner[:-1].view(batch_size, CANVAS_SIZE, CANVAS_SIZE)
        palette = torch.cat([colour.view(batch_size, n, 3), torch.zeros(batch_size, 1, 3, dtype=torch.uint8)], 1)
        shade = torch.where(winner < 0, n, winner) + (n + 1) * torch.arange(batch_size)[:, None, None]
        canvases = palette.view(-1, 3).index_select(0, shade.view(-1))
        canvases = canvases.view(batch_size, CANVAS_SIZE, CANVAS_SIZE, 3).permute(0, 3, 1, 2).contiguous()
        boxes = torch.cat([position.view(batch_size, n, 2), size.view(batch_size, n, 2)], 2)
        return canvases, winner, boxes, glyph.view(batch_size, n)

    def references(self, glyph: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each glyph (B,) drawn again as a reference (B, 3, 32, 32) uint8: its own rotation and shear, no
        scaling, its own colour, centred (clipped when larger than 32 pixels)."""
        count = glyph.shape[0]
        pieces, size, colour, _ = self.draw(glyph, 1.0, generator, torch.zeros(count, dtype=torch.bool))
        corner = torch.div(REFERENCE_SIZE - size, 2, rounding_mode="floor")  # rounded down, may be negative
        drawn = torch.full((count * REFERENCE_SIZE * REFERENCE_SIZE + 1,), -1, dtype=torch.long)
        for index, ink, crop in pieces:
            paint(drawn, REFERENCE_SIZE, index, torch.zeros_like(index), corner[index] - crop[:, :2], crop, ink)
        drawn = drawn[:-1].view(count, 1, REFERENCE_SIZE, REFERENCE_SIZE) == 0
        return drawn * colour[:, :, None, None]

    def _random_glyphs(self, count: int, generator: torch.Generator) -> torch.Tensor:
        character = torch.randint(self.num_characters, (count,), generator=generator)
        return character * self.num_drawers + torch.randint(self.num_drawers, (count,), generator=generator)

    def draw(self, glyph: torch.Tensor, scale: float, generator: torch.Generator, renew: torch.Tensor):
        """Each glyph transformed and cropped, as pieces (indices, ink patches (k, P, P), crop boxes (k, 4) as
        left, top, width, height in the patch), plus every drawing's (width, height), colour (uint8) and the
        glyphs finally used. A draw whose crop is empty fails and is drawn again, as in the original: with a new
        random glyph where ``renew`` (the distractors), with the same glyph elsewhere (target, reference)."""
        glyph = glyph.clone()
        size = torch.zeros(glyph.shape[0], 2, dtype=torch.long)
        pieces = []
        todo = torch.arange(glyph.shape[0])
        while todo.numel():
            for index, ink, crop in self._render(todo, glyph[todo], scale, generator):
                ok = (crop[:, 2:] > 0).all(1)
                pieces.append((index[ok], ink[ok], crop[ok]))
                size[index] = crop[:, 2:]
            todo = todo[(size[todo] == 0).any(1)]
            again = todo[renew[todo]]
            glyph[again] = self._random_glyphs(again.numel(), generator)
        colour = (255 * torch.rand(glyph.shape[0], 3, generator=generator, dtype=torch.float64)).to(torch.uint8)
        return pieces, size, colour, glyph

    def _render(self, index: torch.Tensor, glyph: torch.Tensor, scale: float, generator: torch.Generator):
        """Random transforms of the glyphs, sampled at nearest pixels into square patches grouped by size
        (a multiple of 8 pixels), each cropped; yields (indices, ink patches, crop boxes) per group."""
        count = glyph.shape[0]
        u = torch.rand(count, 4, generator=generator, dtype=torch.float64) * 2 - 1
        phi, theta = torch.deg2rad(u[:, 0] * MAX_ROTATION), torch.deg2rad(u[:, 1] * MAX_SHEAR)
        sx, sy = scale ** u[:, 2], scale ** u[:, 3]
        # Forward linear map glyph (x, y) -> unshrunk drawing; the drawing's frame starts at the transformed
        # square's top left, and its size (truncated, as the original's) bounds where ink may land.
        forward = torch.stack([torch.stack([sx * torch.cos(phi + theta), sy * torch.sin(phi - theta)], 1),
                               torch.stack([-sx * torch.sin(phi + theta), sy * torch.cos(phi - theta)], 1)], 1)
        square = forward @ _corners(torch.tensor([[0.0, _GLYPH, 0.0, _GLYPH]], dtype=torch.float64))
        frame = square.amin(2)
        extent = square.amax(2) - frame
        # Two nearest-pixel steps, as the original: the transformed image is floor(extent) pixels wide (and
        # high), shrunk to floor(32 / 105 extent); drawn pixel u samples transformed pixel floor((u + 0.5) ratio).
        drawn = (extent * _SHRINK).floor()
        ratio = extent.floor() / drawn.clamp(min=1)
        # The glyph's ink box, transformed and shrunk, rounded out by a pixel: the patch to render.
        ink_corners = (forward @ _corners(self.ink_boxes[glyph]) - frame.unsqueeze(2)) / ratio.unsqueeze(2)
        origin = ink_corners.amin(2).floor() - 1
        bucket = ((ink_corners.amax(2) - origin).amax(1) / 8 + 2 / 8).ceil().long() * 8
        inverse = torch.linalg.inv(forward)
        for side in bucket.unique().tolist():
            for chosen in (bucket == side).nonzero().flatten().split(_CHUNK // side**2):
                pixel = origin[chosen, :, None] + torch.arange(side, dtype=torch.float64)  # (k, 2, side): x, y
                # Centres of the transformed pixels sampled by each patch column (x) and row (y)...
                centre = ((pixel + 0.5) * ratio[chosen, :, None]).floor() + 0.5 + frame[chosen, :, None]
                # Their glyph coordinates (+ _SHIFT, so that truncation floors them), by column and by row,
                # pushed far off the glyph where the column or row is outside the drawing.
                outside = ((pixel < 0) | (pixel >= drawn[chosen, :, None]))[:, :, None, :]
                col = (inverse[chosen, :, 0, None] * centre[:, 0, None, :] + _SHIFT).masked_fill_(outside[:, 0], _FAR)
                row = (inverse[chosen, :, 1, None] * centre[:, 1, None, :]).masked_fill_(outside[:, 1], _FAR)
                col, row = col.float(), row.float()
                base = (glyph[chosen] * (_GLYPH + 2) ** 2 - (_SHIFT - 1) * (_GLYPH + 3)).int()  # integers: exact
                ink = _sample(self.bank, col[:, 0, None, :], row[:, 0, :, None], col[:, 1, None, :],
                              row[:, 1, :, None], base[:, None, None])
                yield (index[chosen], ink, _crop(ink))


class OfficialCanvases:
    """The fixed evaluation canvases of an official split (val-one-shot, test-one-shot), regenerated bit for bit
    by the exact generator: ``fixed_tasks(n)`` is the first n canvases of the split's jobs taken from the last
    job backwards (job 4 first, the one whose last canvas the published MD5 checks), the same every call."""

    loss = SEGMENTATION_LOSS
    output_size = 1
    input_shape = CANVAS_SHAPE

    def __init__(self, glyphs: Sequence, characters: int, split: str) -> None:
        self.glyphs, self.characters, self.split = glyphs, characters, split
        self._jobs: dict[int, SegmentationBatch] = {}

    @property
    def size(self) -> int:
        return SPLITS[self.split].size

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0) -> SegmentationBatch:
        """The first ``num_tasks`` canvases; ``split`` and ``seed`` are the official split's, whatever is passed
        (the family refuses a test set other than the first, the only one there is)."""
        if not 1 <= num_tasks <= self.size:
            raise ValueError(f"{self.split} holds {self.size:,} canvases; asked for {num_tasks:,}")
        jobs = len(job_seeds(self.split))
        parts, left = [], num_tasks
        for job in range(jobs - 1, -1, -1):
            if left <= 0:
                break
            parts.append(self._job(job)[:left])
            left -= len(parts[-1])
        return SegmentationBatch.cat(parts)

    def _job(self, job: int) -> SegmentationBatch:
        if job not in self._jobs:
            made = generate_job(self.glyphs, self.characters, self.split, job)
            self._jobs[job] = SegmentationBatch(torch.from_numpy(made.canvases).permute(0, 3, 1, 2).contiguous(),
                                                torch.from_numpy(made.references).permute(0, 3, 1, 2).contiguous(),
                                                torch.from_numpy(made.masks).bool(), torch.from_numpy(made.boxes))
        return self._jobs[job]


#: Patches are rendered this many pixels at a time: small temporaries are reused rather than mapped afresh.
_CHUNK = 1 << 18
#: Glyph coordinates are offset by _SHIFT before truncation (so that it floors them); _FAR pushes a sample off.
_SHIFT = 1024
_FAR = 1e6


def _sample(bank: torch.Tensor, col_x, row_x, col_y, row_y, base) -> torch.Tensor:
    """Nearest-pixel samples at glyph points (col_x + row_x, col_y + row_y) - _SHIFT: the ink patches, uint8."""
    lowest, highest = _SHIFT - 1, _SHIFT + _GLYPH  # the glyph's zero border, both sides
    x = (col_x + row_x).int().clamp_(lowest, highest)
    y = (col_y + row_y).int().clamp_(lowest, highest)
    index = (y * (_GLYPH + 2)).add_(x).add_(base)
    return bank.index_select(0, index.view(-1).long()).view(index.shape)


def _first(any_ink: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.where(any_ink, index, any_ink.shape[1]).amin(1)


def _last(any_ink: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.where(any_ink, index, -1).amax(1)


def _corners(box: torch.Tensor) -> torch.Tensor:
    """(n, 4) boxes [x0, x1, y0, y1] -> (n, 2, 4) corner coordinates."""
    x0, x1, y0, y1 = box.unbind(1)
    return torch.stack([torch.stack([x0, x0, x1, x1], 1), torch.stack([y0, y1, y0, y1], 1)], 1)


def _crop(ink: torch.Tensor) -> torch.Tensor:
    """The official crop of each (P, P) patch, from its first inked row and column up to, not including, its
    last ones: (k, 4) as left, top, width, height (width or height 0: nothing left)."""
    index = torch.arange(ink.shape[1])
    rows, cols = ink.amax(2) > 0, ink.amax(1) > 0  # ink is uint8: amax is quicker than any
    top, left = _first(rows, index), _first(cols, index)
    height = (_last(rows, index) - top).clamp_(min=0)
    width = (_last(cols, index) - left).clamp_(min=0)
    return torch.stack([left, top, width, height], 1)


def paint(winner: torch.Tensor, side: int, image: torch.Tensor, slot: torch.Tensor, corner: torch.Tensor,
           crop: torch.Tensor, ink: torch.Tensor) -> None:
    """Mark, in ``winner`` (images x side x side, flat, plus one spare entry), the highest ``slot`` inked at each
    pixel: patch pixel (i, j) inside the crop lands at ``corner`` + (j, i) of image ``image``, clipped."""
    index = torch.arange(ink.shape[1])
    x = corner[:, 0, None] + index
    y = corner[:, 1, None] + index
    keep_x = (x >= 0) & (x < side) & (index >= crop[:, 0, None]) & (index < crop[:, 0, None] + crop[:, 2, None])
    keep_y = (y >= 0) & (y < side) & (index >= crop[:, 1, None]) & (index < crop[:, 1, None] + crop[:, 3, None])
    keep = (ink > 0) & keep_y[:, :, None] & keep_x[:, None, :]
    pixel = (image[:, None, None] * side + y[:, :, None]) * side + x[:, None, :]
    pixel.masked_fill_(~keep, winner.numel() - 1)
    winner.scatter_reduce_(0, pixel.view(-1), slot[:, None, None].expand_as(keep).reshape(-1), "amax")


def mask_iou(predicted: torch.Tensor, target: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Per-canvas IoU of the predicted mask with the target's, as the paper scores it: ``predicted`` is a
    foreground probability (B, H, W) in [0, 1], or a bool mask, counted as foreground above ``threshold``; a
    canvas where both masks are empty scores 1 (the official code replaces that 0/0 by 1)."""
    guess = predicted if predicted.dtype == torch.bool else predicted > threshold
    truth = target.bool()
    overlap = (guess & truth).sum((1, 2)).double()
    union = (guess | truth).sum((1, 2)).double()
    return torch.where(union > 0, overlap / union.clamp(min=1), 1.0)


def mask_centre(mask: torch.Tensor) -> torch.Tensor:
    """(B, 2) centre of mass (x, y) of each mask, rounded down to a pixel as the official evaluation does it;
    (-1, -1) for an empty mask."""
    mask = mask.double()
    count = mask.sum((1, 2))
    ys, xs = torch.arange(mask.shape[1], dtype=torch.float64), torch.arange(mask.shape[2], dtype=torch.float64)
    centre = torch.stack([(mask.sum(1) * xs).sum(1), (mask.sum(2) * ys).sum(1)], 1) / count.clamp(min=1)[:, None]
    return torch.where(count[:, None] > 0, centre.floor(), -1.0)


def localisation_hits(predicted: torch.Tensor, target: torch.Tensor, threshold: float = 0.3,
                      radius: float = 5.0) -> torch.Tensor:
    """Per canvas, 1.0 when the centre of mass of the predicted mask (thresholded as in ``mask_iou``) lies less
    than ``radius`` pixels from the target's (both from ``mask_centre``), else 0.0: the paper's localisation
    score. Two empty masks share the centre (-1, -1), so they count as a hit, as in the official code."""
    guess = predicted if predicted.dtype == torch.bool else predicted > threshold
    distance = (mask_centre(guess) - mask_centre(target.bool())).norm(dim=1)
    return (distance < radius).double()
