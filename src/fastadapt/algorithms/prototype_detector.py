"""The meta-learned K-shot detector: the Siamese U-Net's network (``siamese_unet``) conditioned on the prototype
of each class's K references, with its CenterNet head returning every instance of the class.

Each reference is read by the shared encoder (its pooled features per level and its 1/8 cells' embeddings, what
the one-shot network takes from its one reference); a class's prototype is the mean of its K references' (as
Prototypical Networks average embeddings), and conditions the network's FiLM layers and matching exactly as
one reference does. Each canvas is encoded once and decoded once per class, to the head's heatmap, sizes and
offsets at 1/4 resolution; the class's detections are the heatmap's local maxima with their boxes, scored by
the peak's probability (``detection.peak_detections``). Trained episodically on training episodes (the
classes of each episode are new, so what is learned is how to condition on references), with CenterNet's loss
over all the instances of each (canvas, class) pair (``siamese_unet.detection_loss``); with ``--mask-loss``
(``method.mask_loss``) also the mask of the class's instances (cross-entropy + soft Dice, the one-shot
network's loss), which costs the decoder's two finest levels. Nothing is adapted at test time.

With ``--base-from RUN`` (``BaseFromOptions``) the network starts from another detector run's network, e.g. a
transfer-detector run's, trained on the base classes without references: Meta-Baseline (Chen et al. 2021), a
classifier pre-trained on the base classes then meta-trained episodically, here for detection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fastadapt.algorithms.base import check_no_steps
from fastadapt.algorithms.detection import DetectionLearner, check_detection_inputs, peak_detections
from fastadapt.algorithms.metrics import loss_named
from fastadapt.algorithms.siamese_unet import (DETECTION_WEIGHT, Reference, SiameseUNetNetwork, cell_boxes,
                                               detection_loss, soft_dice_loss)
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.options import Options, setting
from fastadapt.tasks.cluttered_omniglot import SEGMENTATION_LOSS
from fastadapt.tasks.detection import DetectionBatch


@dataclass(frozen=True)
class MaskLossOptions(Options):
    """Whether the prototype detector learns masks too."""

    mask_loss: bool = setting(False, "prototype-detector: train the mask of each class's instances too "
                                     "(cross-entropy + soft Dice), beside the boxes")


@dataclass(frozen=True)
class BaseFromOptions(Options):
    """Where the detector's network starts (Meta-Baseline)."""

    base_from: str | None = setting(None, "prototype-detector(-anil): a detector run directory (a transfer-detector "
                                          "run, say) whose best network this run starts from (Meta-Baseline)",
                                    weights_from=True)


class PrototypeDetector(DetectionLearner):
    """The Siamese U-Net conditioned on class prototypes (see the module's docstring)."""

    def __init__(self, width: int, mask_loss: bool = False) -> None:
        super().__init__()
        self.network = SiameseUNetNetwork(width)
        self.mask_loss = mask_loss

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> Reference:
        """Each class's prototype: the mean over its K references of what the network reads from one,
        pooled features (E, N, C) per level and 1/8 cells' embeddings (E, N, EMBEDDING, 16)."""
        check_no_steps(steps, "prototype-detector")
        episodes, classes, shots = references.shape[:3]
        read = self.network.read_reference(references.flatten(0, 2))
        return Reference([pooled.unflatten(0, (episodes, classes, shots)).mean(2) for pooled in read.pooled],
                         read.cells.unflatten(0, (episodes, classes, shots)).mean(2))

    def maps(self, prototypes: Reference, canvases: torch.Tensor, mask: bool = False
             ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Mask logits (E, Q, N, H, W) (None without ``mask``) and head maps (E, Q, N, 6, h, w) of every class on
        every canvas of its episode; ``prototypes`` per (episode, class), with its own head's last layer where
        it has one (``Reference.head``: (E, N, 5, C) and (E, N, 5))."""
        episodes, count = canvases.shape[:2]
        classes = prototypes.pooled[0].shape[1]
        flat = canvases.flatten(0, 1)
        features = [f.unflatten(0, (episodes, count))[:, :, None].expand(-1, -1, classes, *f.shape[1:]).flatten(0, 2)
                    for f in self.network.encoder(flat)]

        def per_canvas(t: torch.Tensor) -> torch.Tensor:  # (E, N, ...) -> (E Q N, ...), as the pairs are
            return t[:, None].expand(-1, count, *t.shape[1:]).flatten(0, 2)

        pairs = Reference([per_canvas(p) for p in prototypes.pooled], per_canvas(prototypes.cells),
                          head=None if prototypes.head is None else tuple(per_canvas(t) for t in prototypes.head))
        paired = flat.unflatten(0, (episodes, count))[:, :, None].expand(-1, -1, classes, -1, -1, -1).flatten(0, 2)
        logits, maps = self.network(pairs, paired, features, mask=mask)
        shape = (episodes, count, classes)
        return (None if logits is None else logits.unflatten(0, shape)), maps.unflatten(0, shape)

    def detect(self, adapted: Reference, canvases: torch.Tensor) -> torch.Tensor:
        _, maps = self.maps(adapted, canvases)
        heat = torch.sigmoid(maps[:, :, :, 0].float())  # (E, Q, N, h, w)
        boxes = cell_boxes(maps.flatten(0, 2).float()).unflatten(0, maps.shape[:3])
        return torch.stack([peak_detections(h, b) for h, b in zip(heat, boxes)])

    def meta_loss(self, tasks: DetectionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        check_detection_inputs(tasks.references, tasks.canvases)
        logits, maps = self.maps(self.adapt(tasks.references), tasks.canvases, mask=self.mask_loss)
        classes = maps.shape[2]
        # each (canvas, class) pair's instances: the canvas's boxes, present where they are of that class
        present = tasks.classes[:, :, None, :] == torch.arange(classes, device=maps.device)[None, None, :, None]
        boxes = tasks.boxes[:, :, None].expand(-1, -1, classes, -1, -1)
        box_loss = detection_loss(maps.flatten(0, 2), boxes.flatten(0, 2), present.flatten(0, 2)).mean()
        loss = DETECTION_WEIGHT * box_loss
        extra = {"box_loss": box_loss.detach()}
        if logits is not None:
            flat, masks = logits.flatten(0, 2), tasks.masks.flatten(0, 2)
            mask_loss = (loss_named(SEGMENTATION_LOSS).per_task(flat, masks) + soft_dice_loss(flat, masks)).mean()
            loss = loss + mask_loss
            extra["mask_loss"] = mask_loss.detach()
        metrics = {"loss": loss.detach(), **extra}
        return loss, metrics if self.metrics_as_tensors else {k: v.item() for k, v in metrics.items()}


def start_from_base(learner: PrototypeDetector, context: Any) -> PrototypeDetector:
    """``learner`` with the best network of the run ``base_from`` names, when it names one (Meta-Baseline: both
    detectors hold the same ``SiameseUNetNetwork``, the transfer detector reading it without a reference); a
    ValueError when that run has no such network of the same width."""
    source = context.cfg.method.base_from
    if source is None:
        return learner
    trained = context.trained_learner(source)
    network = getattr(trained, "network", None)
    if not isinstance(network, SiameseUNetNetwork):
        raise ValueError(f"--base-from {source}: that run ({type(trained).__name__}) is not a detector with the "
                         "Siamese U-Net's network to start from")
    if network.width != learner.network.width:
        raise ValueError(f"--base-from {source}: its network is {network.width} channels wide, this run's "
                         f"{learner.network.width} (--conv-channels)")
    learner.network.load_state_dict(network.state_dict())
    return learner


def _build(context: Any) -> PrototypeDetector:
    return start_from_base(PrototypeDetector(context.cfg.model.conv_channels, context.cfg.method.mask_loss), context)


SPECS = (MethodSpec("prototype-detector", PrototypeDetector, _build, (MaskLossOptions, BaseFromOptions),
                    detection=True),)
