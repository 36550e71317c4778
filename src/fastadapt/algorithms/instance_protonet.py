"""One-shot segmentation in clutter as a prototypical network's episode over the canvas's characters
(instance-protonet).

On a cluttered-Omniglot canvas every character is drawn whole in one flat random colour over the ones before
it, and the target is drawn last, so none of it is hidden. The canvas therefore comes apart exactly into its
characters by colour (``colour_instances``), and finding the target becomes a 1-shot episode: the reference is
the one labelled example, the canvas's characters are the candidates. Each candidate and the reference is cut
to its ink's box and stretched to a square (undoing most of the per-axis scaling the generator applies;
rotation and shear remain for the network to see through), then embedded by a Conv-4 (Snell et al. 2017).
The candidate nearest the reference, in squared Euclidean distance, is the target: its pixels are the mask,
and its softmax probability over the canvas's candidates is the score. Training is episodic on canvases drawn
on the fly from the training alphabets: the cross-entropy of that softmax, the true candidate being the one the
target's mask covers.

What it assumes, and the other methods do not: that objects are flat colours that do not share one. That holds
for this benchmark and for scenes drawn its way (the web page's "find it" mode), not for photographs.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from fastadapt.algorithms.segmentation import (Detection, SegmentationLearner, check_segmentation_inputs, ink,
                                               mask_box)
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.models.conv4 import Conv4
from fastadapt.tasks.cluttered_omniglot import SegmentationBatch

#: Side of the square each character is stretched to before it is embedded, and the supersampling of that
#: resampling (sampled at SUPERSAMPLE x the side, then averaged down: thin strokes are not skipped).
CROP, SUPERSAMPLE = 32, 2
#: Mask logits of the chosen character's pixels and of every other pixel (the mask is the chosen character).
CHOSEN_LOGIT = 10.0


class Instances(NamedTuple):
    """The characters of a batch of images, split by colour: ``masks`` (instances, H, W) bool, ``owner``
    (instances,) the image each belongs to, ``slot`` (instances,) its index among its image's characters."""

    masks: torch.Tensor
    owner: torch.Tensor
    slot: torch.Tensor


def colour_instances(images: torch.Tensor) -> Instances:
    """Split RGB images (tasks, 3, H, W) uint8 into their flat-coloured characters: one instance per colour that
    inks an image, ordered by image then colour."""
    tasks, _, height, width = images.shape
    inked = ink(images)
    colour = images.to(torch.int64)
    key = (torch.arange(tasks, device=images.device)[:, None, None] << 24) \
        | (colour[:, 0] << 16) | (colour[:, 1] << 8) | colour[:, 2]
    position = inked.flatten().nonzero().squeeze(1)
    keys, index = torch.unique(key.flatten()[position], return_inverse=True)
    masks = torch.zeros(len(keys), height * width, dtype=torch.bool, device=images.device)
    masks[index, position % (height * width)] = True
    owner = keys >> 24
    first = torch.searchsorted(owner, owner, side="left")
    return Instances(masks.view(-1, height, width), owner, torch.arange(len(keys), device=images.device) - first)


def stretched_crops(masks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each mask (instances, H, W) cut to its box and stretched to CROP x CROP: (instances, 1, CROP, CROP). The
    box's edges map to the square's, and samples stay between the box's outer pixels' centres, so a filled box
    gives a crop of ones (bilinear sampling would otherwise blend in the pixels just outside)."""
    height, width = masks.shape[-2:]
    left, top, box_width, box_height = mask_box(masks).to(dtype).unbind(1)
    zero = torch.zeros_like(left)
    theta = torch.stack([torch.stack([box_width / width, zero, (2 * left + box_width) / width - 1], 1),
                         torch.stack([zero, box_height / height, (2 * top + box_height) / height - 1], 1)], 1)
    side = CROP * SUPERSAMPLE
    grid = F.affine_grid(theta, [len(masks), 1, side, side], align_corners=False)
    size = torch.tensor([width, height], dtype=dtype, device=masks.device)
    first = (2 * torch.stack([left, top], 1) + 1) / size - 1  # the first pixel's centre, normalised
    last = (2 * torch.stack([left + box_width - 1, top + box_height - 1], 1) + 1) / size - 1
    grid = torch.maximum(torch.minimum(grid, last[:, None, None]), first[:, None, None])
    sampled = F.grid_sample(masks[:, None].to(dtype), grid, mode="bilinear", align_corners=False)
    return F.avg_pool2d(sampled, SUPERSAMPLE)


class InstancePrototypes(SegmentationLearner):
    """A Conv-4 embedding of stretched characters; the target is the canvas's character nearest the reference
    (see the module's docstring)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.encoder = Conv4(1, width, norm="layer", image_size=CROP)

    def embed(self, masks: torch.Tensor) -> torch.Tensor:
        """Embeddings (instances, features) of character masks (instances, H, W)."""
        dtype = next(self.encoder.parameters()).dtype
        return self.encoder(stretched_crops(masks, dtype)).flatten(1)

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> torch.Tensor:
        """The references' embeddings: a reference is read in one pass (its ink, whatever its colour)."""
        if steps is not None:
            raise ValueError(f"instance-protonet reads the reference in one pass, not by gradient steps; "
                             f"got steps={steps}")
        return self.embed(ink(references))

    def candidate_logits(self, prototypes: torch.Tensor, canvases: torch.Tensor) -> tuple[torch.Tensor, Instances]:
        """The negative squared distance of each canvas's characters to its reference's embedding, as (tasks,
        most characters on a canvas), -inf past a canvas's last; and the characters."""
        instances = colour_instances(canvases)
        distances = (self.embed(instances.masks) - prototypes[instances.owner]).pow(2).sum(1)
        slots = int(instances.slot.max()) + 1 if len(instances.slot) else 1
        logits = distances.new_full((len(canvases), slots), -torch.inf)
        logits[instances.owner, instances.slot] = -distances
        return logits, instances

    def choose(self, prototypes: torch.Tensor, canvases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen character's mask (tasks, H, W) bool on each canvas (empty on a blank canvas), and its
        softmax probability among the canvas's characters (0 on a blank canvas)."""
        logits, instances = self.candidate_logits(prototypes, canvases)
        probabilities = torch.softmax(logits, 1).nan_to_num(0.0)
        score, best = probabilities.max(1)
        chosen = instances.slot == best[instances.owner]
        masks = torch.zeros(canvases.shape[0], *canvases.shape[-2:], dtype=torch.bool, device=canvases.device)
        masks[instances.owner[chosen]] = instances.masks[chosen]  # one chosen character per inked canvas
        return masks, score

    def predict(self, adapted: torch.Tensor, canvases: torch.Tensor) -> torch.Tensor:
        masks, _ = self.choose(adapted, canvases)
        return torch.where(masks, CHOSEN_LOGIT, -CHOSEN_LOGIT).to(adapted.dtype)

    def detect(self, references: torch.Tensor, canvases: torch.Tensor) -> Detection:
        """The chosen character's box, scored by its probability among the canvas's characters."""
        check_segmentation_inputs(references, canvases)
        masks, score = self.choose(self.adapt(references), canvases)
        return Detection(mask_box(masks), score)

    def meta_loss(self, tasks: SegmentationBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the softmax over each canvas's characters; the target is the character that covers
        most of the target's mask (canvases whose mask is empty do not count)."""
        check_segmentation_inputs(tasks.references, tasks.canvases)
        logits, instances = self.candidate_logits(self.adapt(tasks.references), tasks.canvases)
        covered = (instances.masks & tasks.masks[instances.owner]).flatten(1).sum(1)
        overlap = torch.zeros_like(logits).index_put_((instances.owner, instances.slot), covered.to(logits.dtype))
        present = tasks.masks.flatten(1).any(1)
        losses = F.cross_entropy(logits, overlap.argmax(1), reduction="none") * present
        loss = losses.sum() / present.sum().clamp(min=1)
        chosen = logits.argmax(1) == overlap.argmax(1)
        metrics = {"loss": loss.detach(), "chosen": (chosen & present).sum() / present.sum().clamp(min=1)}
        return loss, (metrics if self.metrics_as_tensors else {k: v.item() for k, v in metrics.items()})


def _build(context: Any) -> InstancePrototypes:
    return InstancePrototypes(context.cfg.model.conv_channels)


SPECS = (MethodSpec("instance-protonet", InstancePrototypes, _build, segmentation=True),)
