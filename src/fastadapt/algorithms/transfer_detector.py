"""The transfer baseline of K-shot detection, after TFA (Wang et al. 2020, "Frustratingly Simple Few-Shot Object
Detection"): a detector trained on the base classes, of which only the last layer is fine-tuned on the K shots.

The detector is the Siamese U-Net's network (``siamese_unet``) read without a reference (pooled features and 1/8
cells of zeros: its FiLM layers reduce to learned per-channel affines, its similarity maps to zeros), so the
same encoder and decoder as the meta-learned detector's, with a CenterNet head: the head's class-agnostic heatmap,
sizes and offsets, and a last layer, a 1x1 convolution of the head's features, giving one heatmap per base class
(every character of the training split). Base training: CenterNet's loss of the class-agnostic maps over all the
instances of a canvas plus the focal loss of the heatmaps of the canvas's episode's classes (as characters of the
split: ``DetectionBatch.characters``) against their instances; a base class's heatmap learns from the canvases of
the episodes it is drawn in (the other 960-odd are not scored on every canvas: that would cost 300 times as much;
the distractors, unlabelled characters, are background to it, as unannotated objects are in detection data).

For an episode (``adapt``), a new last layer with one heatmap per novel class (zero weights, CenterNet's prior
bias) is fitted to the K shots, everything else frozen: each reference pasted into clutter of its own rotations
(``siamese_unet_anil.support_canvases``: the instance is the unrotated paste, drawn last), the focal loss of each
class's heatmap against its references' boxes, ``finetune_steps`` Adam steps at ``finetune_lr`` (Baseline's
settings; its ``finetune`` does not apply: only the last layer is fitted, as TFA does). Detections: the
novel heatmaps' local maxima, each with the class-agnostic box predicted there, then per-class NMS.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from fastadapt.algorithms.base import check_no_steps
from fastadapt.algorithms.baseline import FinetuneOptions
from fastadapt.algorithms.detection import DetectionLearner, check_detection_inputs, peak_detections
from fastadapt.algorithms.segmentation import mask_box
from fastadapt.algorithms.siamese_unet import (EMBEDDING, Reference, SiameseUNetNetwork, cell_boxes,
                                               centre_targets, detection_loss, focal_loss)
from fastadapt.algorithms.siamese_unet_anil import support_canvases
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.tasks.detection import DetectionBatch

#: CenterNet's prior bias of a heatmap: a peak probability of 0.1.
PRIOR = -2.19


class NovelLayer(NamedTuple):
    """Each episode's last layer: weight (E, N, C) and bias (E, N) of a 1x1 convolution of the head's features."""

    weight: torch.Tensor
    bias: torch.Tensor


class TransferDetector(DetectionLearner):
    """Base-class training, then the last layer fine-tuned on the K shots (see the module's docstring)."""

    def __init__(self, width: int, base_classes: int, finetune_steps: int, finetune_lr: float) -> None:
        super().__init__()
        self.network = SiameseUNetNetwork(width)
        # the base classes' last layer: a 1x1 convolution of the head's features per class
        self.class_weight = nn.Parameter(torch.zeros(base_classes, 2 * width))
        self.class_bias = nn.Parameter(torch.full((base_classes,), PRIOR))
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr

    def features(self, canvases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's features (B, C, h, w) of canvases (B, 3, 96, 96) and its class-agnostic maps (B, 5, h, w)."""
        count, width = len(canvases), self.network.width
        nothing = Reference([canvases.new_zeros(count, width * m, dtype=torch.float32) for m in (1, 2, 4, 8)],
                            canvases.new_zeros(count, EMBEDDING, 16, dtype=torch.float32))
        x, _, _ = self.network.decode(nothing, canvases)
        hidden = self.network.head[0](x)
        return hidden, self.network.head[1](hidden)

    def meta_loss(self, tasks: DetectionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Base training: the class-agnostic CenterNet loss and each base class's focal loss, per canvas."""
        check_detection_inputs(tasks.references, tasks.canvases)
        hidden, maps = self.features(tasks.canvases.flatten(0, 1))
        boxes, classes = tasks.boxes.flatten(0, 1), tasks.classes.flatten(0, 1)  # (B, M, 4), (B, M)
        present = classes >= 0
        agnostic = detection_loss(maps, boxes, present).mean()
        count = tasks.canvases.shape[1]
        episode_classes = tasks.characters[:, None].expand(-1, count, -1).flatten(0, 1)  # (B, N) characters
        heat = (torch.einsum("bnc,bchw->bnhw", self.class_weight[episode_classes], hidden)
                + self.class_bias[episode_classes][..., None, None])
        gaussians = centre_targets(boxes, maps.shape[-2:], maps.dtype).gaussians * present[..., None, None]
        target = torch.zeros_like(heat).scatter_reduce_(1, classes.clamp(min=0)[..., None, None].expand_as(gaussians),
                                                        gaussians, "amax")
        per_class = (focal_loss(heat, target) / present.sum(1).clamp(min=1)).mean()
        loss = agnostic + per_class
        metrics = {"loss": loss.detach(), "box_loss": agnostic.detach(), "class_loss": per_class.detach()}
        return loss, metrics if self.metrics_as_tensors else {k: v.item() for k, v in metrics.items()}

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> NovelLayer:
        """Each episode's novel last layer, fitted to its references pasted into clutter (the base frozen)."""
        check_no_steps(steps, "transfer-detector")
        episodes, classes, shots = references.shape[:3]
        canvases, masks = support_canvases(references.flatten(0, 2))
        with torch.no_grad():
            hidden, maps = self.features(canvases)
        hidden = hidden.unflatten(0, (episodes, classes * shots))  # (E, N K, C, h, w)
        boxes = mask_box(masks).unflatten(0, (episodes, classes * shots))[:, :, None]  # (E, N K, 1, 4)
        gaussian = centre_targets(boxes, maps.shape[-2:], maps.dtype).gaussians[:, :, 0]  # (E, N K, h, w)
        mine = torch.arange(classes).repeat_interleave(shots)[:, None] == torch.arange(classes)  # (N K, N)
        target = gaussian[:, :, None] * mine[None, :, :, None, None]  # (E, N K, N, h, w)
        weight = torch.zeros(episodes, classes, hidden.shape[2], requires_grad=True)
        bias = torch.full((episodes, classes), PRIOR, requires_grad=True)
        optimiser = torch.optim.Adam([weight, bias], self.finetune_lr)
        with torch.enable_grad():  # evaluation runs under no_grad; the last layer is fitted by gradient steps
            for _ in range(self.finetune_steps):
                heat = torch.einsum("enc,eschw->esnhw", weight, hidden) + bias[:, None, :, None, None]
                loss = focal_loss(heat.flatten(0, 1), target.flatten(0, 1)).sum() / max(1, shots)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        return NovelLayer(weight.detach(), bias.detach())

    def detect(self, adapted: NovelLayer, canvases: torch.Tensor) -> torch.Tensor:
        episodes, count = canvases.shape[:2]
        hidden, maps = self.features(canvases.flatten(0, 1))
        hidden = hidden.unflatten(0, (episodes, count))
        heat = torch.sigmoid(torch.einsum("enc,eqchw->eqnhw", adapted.weight, hidden.float())
                             + adapted.bias[:, None, :, None, None])
        boxes = cell_boxes(maps.float()).unflatten(0, (episodes, count))  # (E, Q, h, w, 4), any class
        boxes = boxes[:, :, None].expand(-1, -1, heat.shape[2], -1, -1, -1)
        return torch.stack([peak_detections(h, b) for h, b in zip(heat, boxes)])


def _build(context: Any) -> TransferDetector:
    cfg = context.cfg
    return TransferDetector(cfg.model.conv_channels, context.tasks.output_size, cfg.method.finetune_steps,
                            cfg.method.finetune_lr)


SPECS = (MethodSpec("transfer-detector", TransferDetector, _build, (FinetuneOptions,), detection=True),)
