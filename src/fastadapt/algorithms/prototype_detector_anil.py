"""The meta-learned K-shot detector with its head's last layer adapted to each class by gradient steps, meta-learned
as ANIL (Raghu et al. 2020) does: only the last layer adapts, the rest is learned by the outer loop alone.

The prototype detector (``prototype_detector``) conditions the Siamese U-Net on the mean of what it reads from a
class's K references and decodes each canvas once per class. Here, before the canvases are decoded, the last
layer of the CenterNet head (a 1x1 convolution giving the heat logits, sizes and offsets) takes ``inner_steps``
gradient steps of size ``inner_lr`` per (episode, class) on a support built from the class's references alone,
as ``siamese_unet_anil`` builds one for segmentation: each reference pasted into clutter of its own rotations
(``support_canvases``), the reference pasted last, its ink's box the one instance. The inner loss is CenterNet's
(``siamese_unet.detection_loss``) of the support canvases decoded with the class's prototype, averaged over the
K references, so that the step size means the same at any number of shots. Only the last layer changes between
steps, so the support is encoded and decoded once and the steps cost a 1x1 convolution each. The outer loop
trains everything through the adapted layer (the prototype detector's loss on the query canvases), with
second-order gradients unless ``first_order``; evaluation adapts with ``eval_inner_steps`` (default:
``inner_steps``).
"""
from __future__ import annotations

from typing import Any

import torch

from fastadapt.algorithms.maml import GRADIENT_OPTIONS
from fastadapt.algorithms.prototype_detector import BaseFromOptions, PrototypeDetector, start_from_base
from fastadapt.algorithms.segmentation import mask_box
from fastadapt.algorithms.siamese_unet import Reference, detection_loss
from fastadapt.algorithms.siamese_unet_anil import AdaptsToReferences, support_canvases
from fastadapt.algorithms.spec import MethodSpec


class PrototypeDetectorANIL(AdaptsToReferences, PrototypeDetector):
    """The prototype detector whose head's last layer adapts to each class (see the module's docstring)."""

    def __init__(self, width: int, inner_lr: float, inner_steps: int, eval_inner_steps: int | None = None,
                 first_order: bool = False) -> None:
        super().__init__(width)
        self.set_inner_loop(inner_lr, inner_steps, eval_inner_steps, first_order)

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> Reference:
        """Each class's prototype (``PrototypeDetector.adapt``) with the head's last layer adapted to its support,
        weight (E, N, 5, C) and bias (E, N, 5)."""
        steps = self.steps_to_take(steps)
        episodes, classes, shots = references.shape[:3]
        support, masks = support_canvases(references.flatten(0, 2))  # (E N K, 3, 96, 96), (E N K, 96, 96)
        boxes = mask_box(masks)
        with torch.enable_grad():  # evaluation runs under no_grad; the last layer adapts by gradient steps
            prototypes = super().adapt(references)
            # each support canvas read with its class's prototype
            pairs = Reference([p.flatten(0, 1).repeat_interleave(shots, 0) for p in prototypes.pooled],
                              prototypes.cells.flatten(0, 1).repeat_interleave(shots, 0))
            x, _, similarity = self.network.decode(pairs, support)
            hidden = self.network.head[0](x)
            if not self.training:
                hidden, similarity = hidden.detach(), similarity.detach()
            last = self.network.head[1]
            weight = last.weight.flatten(1).expand(episodes * classes, -1, -1)
            bias = last.bias.expand(episodes * classes, -1)
            for _ in range(steps):
                maps = self.network.head_maps(hidden, similarity, (weight.repeat_interleave(shots, 0),
                                                                   bias.repeat_interleave(shots, 0)))
                # A sum over (episode, class) tasks, each its K supports' mean: each layer gets its own loss's gradient.
                loss = detection_loss(maps, boxes).sum() / shots
                grads = torch.autograd.grad(loss, (weight, bias), create_graph=self.training and not self.first_order)
                weight, bias = weight - self.inner_lr * grads[0], bias - self.inner_lr * grads[1]
        head = (weight.unflatten(0, (episodes, classes)), bias.unflatten(0, (episodes, classes)))
        if not self.training:
            return Reference([p.detach() for p in prototypes.pooled], prototypes.cells.detach(),
                             head=tuple(t.detach() for t in head))
        return prototypes._replace(head=head)


def _build(context: Any) -> PrototypeDetectorANIL:
    cfg = context.cfg
    return start_from_base(PrototypeDetectorANIL(cfg.model.conv_channels, cfg.method.inner_lr, cfg.method.inner_steps,
                                                 cfg.method.eval_inner_steps, cfg.method.first_order), context)


SPECS = (MethodSpec("prototype-detector-anil", PrototypeDetectorANIL, _build, (*GRADIENT_OPTIONS, BaseFromOptions),
                    detection=True),)
