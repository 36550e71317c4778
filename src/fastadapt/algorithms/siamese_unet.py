"""A Siamese U-Net for one-shot segmentation in clutter (after Michaelis, Bethge & Ecker 2018), with a
CenterNet-style detection head (Zhou et al. 2019, "Objects as Points") so that it also returns boxes.

One encoder reads both the canvas and the reference (shared weights: the Siamese part), from their ink alone
(drawn or not): the reference's colour is not the target's. The reference conditions the canvas in two ways.
By matching, as prototypical networks compare (Snell et al. 2017): a 1x1 projection of the 1/8-resolution
features embeds each cell of both images; each canvas cell's cosine similarity with the reference's prototype
(its inked cells' mean embedding) and with its best-matching inked cell are two maps that enter the decoder at
1/8, 1/4 and full resolution. And by FiLM (a per-channel scale and shift computed from the reference's pooled
features) at all four levels. The decoder climbs back to the canvas's resolution through the conditioned skip
connections and outputs the target's mask logits, its last layer also reading the canvas's RGB (within the
canvas, colour tells the target's strokes from others' where they cross). From its 1/4-resolution features a
CenterNet head predicts a heatmap of the target's centre, the box's size and the centre's sub-cell offset: the
box is read at the heatmap's peak, and the peak's probability is its score.

Training minimises the mask's pixel-wise binary cross-entropy (the paper's loss) plus its soft Dice loss plus a
matching loss, plus 0.1 x the detection loss (CenterNet's penalty-reduced focal loss on a Gaussian around the
true centre, L1 on the offset and on the size in cells at the true centre). The Dice term counters the
imbalance (about 1% of a canvas's pixels are the target's), which with cross-entropy alone drove the predicted
probabilities below the 0.3 threshold in a first short run. The matching loss is the mask at 1/4 resolution as
the prototype would find it: a softmax over the cells of the scaled prototype similarity, against the share of
the target's mask in each cell. It, and the prototype similarity added to the heat logits, train the
embedding directly from the first step; without them the network settled on the floor of predicting all the
ink, the decoder never learning to use the reference (docs/results.md). Nothing is adapted at test time: the
reference is read in one pass (``adapt``), which is what a feed-forward one-shot learner does.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import math

from fastadapt.algorithms.metrics import MASK_LOGIT_THRESHOLD, at_least_fp32
from fastadapt.algorithms.segmentation import (Detection, Found, SegmentationLearner, check_segmentation_inputs,
                                               inside_boxes, ink, peaks)
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.tasks.cluttered_omniglot import SegmentationBatch

#: The detection head works at 1/4 of the canvas's resolution (a cell is 4 x 4 pixels).
CELL = 4
#: Weight of the detection loss against the mask's.
DETECTION_WEIGHT = 0.1
#: CenterNet's focal loss exponents (alpha on the prediction, beta on the Gaussian's complement).
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0
#: Channels of the last layer, at the canvas's full resolution.
OUT_WIDTH = 8
#: Size of the embedding in which canvas cells and the reference are compared, and the similarity maps made
#: from it (the prototype's and the best-matching cell's).
EMBEDDING, SIMILARITIES = 32, 2
#: The prototype similarity's initial weights (learnt) in the CenterNet heat logits and in the matching logits.
HEAT_SCALE, MATCH_SCALE = 5.0, 10.0


def _conv(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.GroupNorm(4, outputs),
                         nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Four levels, each a stride-2 convolution then a convolution: features at 1/2, 1/4, 1/8 and 1/16 of the
    input's size, with width, 2, 4 and 8 x width channels. It reads the ink alone: a reference's colour is not
    its target's, so colour could only mislead the comparison."""

    def __init__(self, width: int) -> None:
        super().__init__()
        widths = (1, width, 2 * width, 4 * width, 8 * width)
        self.levels = nn.ModuleList(
            nn.Sequential(_conv(widths[i], widths[i + 1], 2), _conv(widths[i + 1], widths[i + 1])) for i in range(4))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ink(images).to(self.levels[0][0][0].weight.dtype)[:, None]
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class Reference(NamedTuple):
    """What the network takes from a reference: its pooled features per level; its embedding's unit vectors at
    each inked cell of its 1/8 map (tasks, EMBEDDING, 16), zero at the others; the FiLM layers' weights per
    task where they were adapted to it ((weight (tasks, 2C, C), bias (tasks, 2C)) per level; None: the
    network's own); and likewise the head's last layer (weight (tasks, 5, C), bias (tasks, 5); ``head_maps``)."""

    pooled: list[torch.Tensor]
    cells: torch.Tensor
    film: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    head: tuple[torch.Tensor, torch.Tensor] | None = None


def network_input(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """RGB images (tasks, 3, H, W) uint8 as the last layer reads them: RGB in [0, 1] and the ink, 4 channels."""
    return torch.cat([images.to(dtype) / 255, ink(images).to(dtype)[:, None]], 1)


class SiameseUNetNetwork(nn.Module):
    """The encoder, the matching and FiLM conditioning, the decoder to mask logits and the CenterNet head."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        channels = [width * m for m in (1, 2, 4, 8)]
        self.encoder = Encoder(width)
        self.embed = nn.Conv2d(channels[2], EMBEDDING, 1)
        self.film = nn.ModuleList(nn.Linear(c, 2 * c) for c in channels)
        for film in self.film:  # starts as the identity: scale 1 + 0, shift 0
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        self.bottom = _conv(channels[3], channels[3])
        self.up3 = _conv(channels[3] + channels[2] + SIMILARITIES, channels[2])
        self.up2 = _conv(channels[2] + channels[1] + SIMILARITIES, channels[1])
        self.up1 = _conv(channels[1] + channels[0], channels[0])
        # At the canvas's resolution, a narrow layer: the costliest of the network per channel.
        self.out = nn.Sequential(_conv(channels[0] + 4 + SIMILARITIES, OUT_WIDTH), nn.Conv2d(OUT_WIDTH, 1, 1))
        self.head = nn.Sequential(_conv(channels[1], channels[1]), nn.Conv2d(channels[1], 5, 1))  # heat, size, offset
        nn.init.constant_(self.head[1].bias[:1], -2.19)  # CenterNet's prior: a peak probability of 0.1
        # The similarity's weight in the heat logits: its gradient trains the embedding from the first step.
        self.heat_scale = nn.Parameter(torch.tensor(HEAT_SCALE))
        # The same similarity scaled as logits of where the target's ink is, for the matching loss.
        self.match_scale = nn.Parameter(torch.tensor(MATCH_SCALE))

    def read_reference(self, references: torch.Tensor) -> Reference:
        features = self.encoder(references)
        drawn = F.avg_pool2d(ink(references).to(features[2].dtype)[:, None], 8).flatten(1) > 0  # (tasks, 16)
        cells = F.normalize(self.embed(features[2]).flatten(2), dim=1) * drawn[:, None]
        return Reference([f.mean((2, 3)) for f in features], cells)

    def forward(self, reference: Reference, canvases: torch.Tensor, features: list[torch.Tensor] | None = None,
                mask: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Mask logits (tasks, H, W) and the head's maps (tasks, 6, H / 4, W / 4): heat logits, size (w, h) in
        cells, offset (x, y) of the centre within its cell, and the matching logits (``matching_loss``).
        ``features``: the canvases' encoder features, when they are known already; ``mask`` False: the head's
        maps only (None for the mask), sparing the decoder's two finest levels, the costliest."""
        x, conditioned, similarity = self.decode(reference, canvases, features)
        maps = self.head_maps(self.head[0](x), similarity, reference.head)
        if not mask:
            return None, maps
        x = self.up1(torch.cat([_up(x), conditioned[0]], 1))
        inputs = network_input(canvases, x.dtype)
        similarity = F.interpolate(similarity, scale_factor=4, mode="bilinear", align_corners=False)
        return self.out(torch.cat([_up(x), inputs, similarity], 1))[:, 0], maps

    def head_maps(self, hidden: torch.Tensor, similarity: torch.Tensor,
                  last: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The head's maps (tasks, 6, h, w) (``forward``) from its hidden features (tasks, C, h, w), what its
        first layer makes of the decoder's, and the similarity maps: its last layer, a 1x1 convolution, is the
        network's own or, per task, ``last`` (weight (tasks, 5, C), bias (tasks, 5)), as a learner adapts it."""
        if last is None:
            maps = self.head[1](hidden)
        else:
            weight, bias = last
            maps = torch.einsum("toc,tchw->tohw", weight, hidden) + bias[:, :, None, None]
        return torch.cat([maps[:, :1] + self.heat_scale * similarity[:, :1], maps[:, 1:],
                          self.match_scale * similarity[:, :1]], 1)

    def decode(self, reference: Reference, canvases: torch.Tensor, features: list[torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The decoder's features at 1/4 resolution (what the head reads), the conditioned encoder features
        (the skips of the finer levels) and the similarity maps at 1/4 resolution (``similarities``)."""
        features = self.encoder(canvases) if features is None else features
        film = reference.film or [(layer.weight.expand(len(canvases), -1, -1), layer.bias.expand(len(canvases), -1))
                                  for layer in self.film]
        conditioned = []
        for feature, pooled, (weight, bias) in zip(features, reference.pooled, film):
            scale, shift = (torch.einsum("toc,tc->to", weight, pooled) + bias).chunk(2, 1)
            conditioned.append(feature * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        similarity = similarities(F.normalize(self.embed(features[2]), dim=1), reference.cells)
        x = self.bottom(conditioned[3])
        x = self.up3(torch.cat([_up(x), conditioned[2], similarity], 1))
        similarity = _up(similarity)
        return self.up2(torch.cat([_up(x), conditioned[1], similarity], 1)), conditioned, similarity


def similarities(canvas: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """How much each cell of each canvas looks like its reference, as prototypical networks compare (Snell et
    al. 2017): from the canvases' unit embeddings (tasks, E, h, w) and the reference's inked cells' (tasks, E,
    16; zero where uninked), the cosine similarity with the reference's prototype (its inked cells' mean,
    normalised) and with its best-matching cell: (tasks, 2, h, w), each in [-1, 1] (0 for a blank reference)."""
    prototype = F.normalize(cells.sum(2), dim=1)
    scores = torch.einsum("tehw,tek->tkhw", canvas, cells)
    inked = cells.abs().sum(1) > 0  # (tasks, 16)
    best = scores.masked_fill(~inked[:, :, None, None], -1).amax(1) * inked.any(1)[:, None, None]
    return torch.stack([torch.einsum("tehw,te->thw", canvas, prototype), best], 1)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SiameseUNet(SegmentationLearner):
    """The Siamese U-Net with its CenterNet head, trained feed-forward (see the module's docstring)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.network = SiameseUNetNetwork(width)

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> Reference:
        if steps is not None:
            raise ValueError(f"siamese-unet reads the reference in one pass, not by gradient steps; got steps={steps}")
        return self.network.read_reference(references)

    def predict(self, adapted: Reference, canvases: torch.Tensor) -> torch.Tensor:
        return self.network(adapted, canvases)[0]

    def detect(self, references: torch.Tensor, canvases: torch.Tensor) -> Detection:
        """Each reference's object on its canvas as a box with a score (the heatmap's peak)."""
        check_segmentation_inputs(references, canvases)
        return decode_boxes(self.network(self.adapt(references), canvases)[1])

    def prepare(self, references: torch.Tensor) -> Reference:
        return self.network.read_reference(references)

    def find(self, prepared: Reference, canvases: torch.Tensor, count: int, min_score: float) -> Found:
        """The heatmap's peaks, each decoded as ``decode_boxes`` decodes the highest; each canvas is encoded
        once for all references."""
        references, tiles = len(prepared.cells), len(canvases)
        features = [f.repeat(references, 1, 1, 1) for f in self.network.encoder(canvases)]
        reference = Reference([p.repeat_interleave(tiles, 0) for p in prepared.pooled],
                              prepared.cells.repeat_interleave(tiles, 0))
        logits, maps = self.network(reference, canvases.repeat(references, 1, 1, 1), features)
        values, index = peaks(at_least_fp32(maps[:, 0]), count)
        scores = torch.where(torch.isfinite(values), torch.sigmoid(values), -math.inf)
        boxes = decode_at(at_least_fp32(maps), index)
        masks = (at_least_fp32(logits) > MASK_LOGIT_THRESHOLD) & inside_boxes(boxes, scores >= min_score,
                                                                              logits.shape[-2:])
        shape = (references, tiles)
        return Found(boxes.view(*shape, count, 4), scores.view(*shape, count), masks.view(*shape, *masks.shape[-2:]))

    def meta_loss(self, tasks: SegmentationBatch) -> tuple[torch.Tensor, dict[str, float]]:
        check_segmentation_inputs(tasks.references, tasks.canvases)
        logits, maps = self.network(self.adapt(tasks.references), tasks.canvases)
        mask_loss = (self.task_losses(logits, tasks.masks) + soft_dice_loss(logits, tasks.masks)
                     + matching_loss(maps[:, 5], tasks.masks)).mean()
        box_loss = detection_loss(maps, tasks.boxes).mean()
        loss = mask_loss + DETECTION_WEIGHT * box_loss
        metrics = self.metrics(logits, tasks.masks, loss)
        extra = {"mask_loss": mask_loss.detach(), "box_loss": box_loss.detach()}
        return loss, {**metrics, **(extra if self.metrics_as_tensors else {k: v.item() for k, v in extra.items()})}


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - the soft Dice overlap of each predicted mask (tasks, H, W) with the target's, smoothed by 1 (an empty
    target predicted empty costs nothing): (tasks,)."""
    p = torch.sigmoid(at_least_fp32(logits)).flatten(1)
    y = masks.flatten(1).to(p.dtype)
    return 1 - (2 * (p * y).sum(1) + 1) / (p.sum(1) + y.sum(1) + 1)


def matching_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the softmax over cells of ``logits`` (tasks, h, w) against the share of the target's mask
    (tasks, H, W) in each cell: (tasks,), 0 for an empty mask."""
    share = F.adaptive_avg_pool2d(masks[:, None].to(logits.dtype), logits.shape[-2:]).flatten(1)
    share = share / share.sum(1, keepdim=True).clamp(min=1e-12)
    return -(share * F.log_softmax(at_least_fp32(logits).flatten(1), 1)).sum(1)


def detection_loss(maps: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's loss of each task: maps (tasks, 5 or more, h, w) as ``SiameseUNetNetwork`` outputs them, boxes
    (tasks, 4), or several per task (tasks, M, 4) of which ``present`` (tasks, M) says which are objects, as
    (left, top, width, height) in pixels -> (tasks,). The heatmap's target is the largest of the objects'
    Gaussians; the focal and regression losses are summed over the objects and divided by their number (at
    least 1), as CenterNet normalises them; a task without objects is all background."""
    if boxes.dim() == 2:
        boxes = boxes[:, None]
    present = torch.ones(boxes.shape[:2], dtype=torch.bool, device=maps.device) if present is None else present
    target = centre_targets(boxes, maps.shape[-2:], maps.dtype)
    gaussian = (target.gaussians * present[..., None, None]).amax(1)
    focal = focal_loss(maps[:, 0], gaussian)
    width = maps.shape[-1]
    index = (target.cell[..., 1] * width + target.cell[..., 0]).long()  # (tasks, M)
    at_centre = at_least_fp32(maps[:, 1:5].flatten(2).gather(2, index[:, None, :].expand(-1, 4, -1)))  # (tasks, 4, M)
    regression = ((at_centre[:, :2] - target.size.transpose(1, 2)).abs().sum(1)
                  + (at_centre[:, 2:] - (target.centre - target.cell).transpose(1, 2)).abs().sum(1))  # (tasks, M)
    count = present.sum(1).clamp(min=1)
    return (focal + (regression * present).sum(1)) / count


class CentreTargets(NamedTuple):
    """What CenterNet's loss compares the maps with, per box (tasks, M): its centre (x, y) in cells, the cell
    holding it, its size (w, h) in cells, and its Gaussian over the cells (tasks, M, h, w), exactly 1 at the cell."""

    centre: torch.Tensor
    cell: torch.Tensor
    size: torch.Tensor
    gaussians: torch.Tensor


def centre_targets(boxes: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> CentreTargets:
    """The targets of boxes (tasks, M, 4) in pixels (left, top, width, height) on maps of ``shape`` (h, w) cells."""
    height, width = shape
    boxes = boxes.to(dtype)
    centre = (boxes[..., :2] + boxes[..., 2:] / 2) / CELL
    cell = torch.minimum(centre.floor().clamp(min=0), torch.tensor([width - 1, height - 1], device=boxes.device))
    size = boxes[..., 2:] / CELL
    sigma = (size.amin(-1) / 6).clamp(min=0.5)  # CenterNet: a Gaussian of a third of the object's radius
    xs = torch.arange(width, device=boxes.device, dtype=dtype)
    ys = torch.arange(height, device=boxes.device, dtype=dtype)
    gaussians = torch.exp(-((xs[None, None, None, :] - cell[..., 0, None, None]) ** 2
                            + (ys[None, None, :, None] - cell[..., 1, None, None]) ** 2)
                          / (2 * sigma[..., None, None] ** 2))
    return CentreTargets(centre, cell, size, gaussians)


def focal_loss(heat: torch.Tensor, gaussian: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss of heat logits (tasks, ..., h, w) against the target (same shape),
    positive where it is exactly 1 (the centres' cells), summed over all but the first dimension: (tasks,)."""
    peak = gaussian >= 1
    heat = at_least_fp32(heat)
    p = torch.sigmoid(heat)
    positive = -F.logsigmoid(heat) * (1 - p) ** FOCAL_ALPHA * peak
    negative = -F.logsigmoid(-heat) * p ** FOCAL_ALPHA * (1 - gaussian) ** FOCAL_BETA * ~peak
    return (positive + negative).flatten(1).sum(1)


def cell_boxes(maps: torch.Tensor) -> torch.Tensor:
    """The box predicted at every cell of the head's maps (tasks, 5 or more, h, w): (tasks, h, w, 4) as (left, top,
    width, height) in pixels, centred at the cell plus its offset, of the predicted size."""
    height, width = maps.shape[-2:]
    cells = torch.stack(torch.meshgrid(torch.arange(width, device=maps.device, dtype=maps.dtype),
                                       torch.arange(height, device=maps.device, dtype=maps.dtype), indexing="xy"), -1)
    centre = (cells + maps[:, 3:5].permute(0, 2, 3, 1)) * CELL
    size = maps[:, 1:3].permute(0, 2, 3, 1).clamp(min=0) * CELL
    return torch.cat([centre - size / 2, size], -1)


def decode_boxes(maps: torch.Tensor) -> Detection:
    """The box at each heatmap's peak: its centre from the peak's cell and offset, its size from the size maps."""
    heat = maps[:, 0].flatten(1)
    best = heat.argmax(1)
    return Detection(decode_at(maps, best[:, None])[:, 0], torch.sigmoid(heat.gather(1, best[:, None])[:, 0]))


def decode_at(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The boxes (tasks, count, 4) the maps (tasks, 5 or more, h, w) give at the cells ``index`` (tasks, count),
    flat."""
    return cell_boxes(maps).flatten(1, 2).gather(1, index[..., None].expand(-1, -1, 4))


def _build(context: Any) -> SiameseUNet:
    return SiameseUNet(context.cfg.model.conv_channels)


SPECS = (MethodSpec("siamese-unet", SiameseUNet, _build, segmentation=True),)
