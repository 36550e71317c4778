"""The Siamese U-Net with its conditioning adapted to each reference by gradient steps, meta-learned as ANIL
(Raghu et al. 2020) does: only the last layers adapt, the rest is learned by the outer loop alone.

The feed-forward Siamese U-Net (``siamese_unet``) reads a reference in one pass: FiLM layers map its pooled
features to a scale and shift of the canvas's features. Here those FiLM layers (the conditioning) also take
``inner_steps`` gradient steps of size ``inner_lr`` on a support task built from the reference alone, before
the canvas is segmented with them: the reference pasted into synthetic clutter, made of the same reference
rotated by 90, 180 and 270 degrees (shapes with its strokes that are not it), the reference pasted last so that
its ink is the support's mask, at positions derived from its pixels (so that a task's support depends on nothing
else, and the same reference always gets the same support). The inner loss is the mask's cross-entropy plus soft
Dice, as the outer one. The outer loop trains everything (encoder, conditioning, decoder, head) through the
adapted conditioning, with second-order gradients unless ``first_order``. At test time the reference is adapted
to with ``eval_inner_steps`` (default: ``inner_steps``).
"""
from __future__ import annotations

from typing import Any

import torch

from fastadapt.algorithms.maml import GRADIENT_OPTIONS
from fastadapt.algorithms.siamese_unet import Reference, SiameseUNet, soft_dice_loss
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.tasks.cluttered_omniglot import CANVAS_SIZE, REFERENCE_SIZE

#: The support's pastes: quarter turns of the reference (0: the reference itself, pasted last), and the
#: multipliers that derive each paste's (x, y) from the reference's pixel sum.
PASTES = ((1, 7, 11), (2, 13, 17), (3, 19, 23), (0, 29, 31))


def support_canvases(references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each reference (tasks, 3, 32, 32) pasted into clutter of its own rotations: canvases (tasks, 3, 96, 96)
    and the masks (tasks, 96, 96) of the reference's ink there (see the module's docstring)."""
    tasks = references.shape[0]
    canvases = references.new_zeros(tasks, 3, CANVAS_SIZE, CANVAS_SIZE)
    masks = torch.zeros(tasks, CANVAS_SIZE, CANVAS_SIZE, dtype=torch.bool, device=references.device)
    sums = references.long().sum((1, 2, 3)).tolist()
    room = CANVAS_SIZE - REFERENCE_SIZE + 1
    for task, total in enumerate(sums):
        for turns, x_factor, y_factor in PASTES:
            piece = torch.rot90(references[task], turns, (1, 2))
            x, y = total * x_factor % room, total * y_factor % room
            drawn = piece.amax(0) > 0
            canvases[task, :, y:y + REFERENCE_SIZE, x:x + REFERENCE_SIZE][:, drawn] = piece[:, drawn]
        masks[task, y:y + REFERENCE_SIZE, x:x + REFERENCE_SIZE] = drawn
    return canvases, masks


class AdaptsToReferences:
    """The inner-loop settings of a learner that adapts some weights to each reference pasted into clutter:
    ``inner_lr``, ``inner_steps`` while training, ``eval_inner_steps`` when evaluating (default: ``inner_steps``),
    and ``first_order`` (no second-order meta-gradient)."""

    training: bool

    def set_inner_loop(self, inner_lr: float, inner_steps: int, eval_inner_steps: int | None,
                       first_order: bool) -> None:
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps

    def steps_to_take(self, steps: int | None) -> int:
        """``steps`` if given, else the training or the evaluation count, as the module's mode says."""
        if steps is not None:
            return steps
        return self.inner_steps if self.training else self.eval_inner_steps


class SiameseUNetANIL(AdaptsToReferences, SiameseUNet):
    """The Siamese U-Net whose FiLM conditioning adapts to each reference (see the module's docstring)."""

    def __init__(self, width: int, inner_lr: float, inner_steps: int, eval_inner_steps: int | None = None,
                 first_order: bool = False) -> None:
        super().__init__(width)
        self.set_inner_loop(inner_lr, inner_steps, eval_inner_steps, first_order)

    def adapt(self, references: torch.Tensor, support_y: Any = None, steps: int | None = None) -> Reference:
        """The reference's features and the FiLM weights adapted to its support canvas, per task."""
        steps = self.steps_to_take(steps)
        support, masks = support_canvases(references)
        with torch.enable_grad():  # evaluation runs under no_grad; the conditioning adapts by gradient steps
            reference = self.network.read_reference(references)
            features = self.network.encoder(support)
            tasks = references.shape[0]
            film = [(layer.weight.expand(tasks, -1, -1), layer.bias.expand(tasks, -1)) for layer in self.network.film]
            for _ in range(steps):
                logits, _ = self.network(reference._replace(film=film), support, features)
                # A sum over tasks: each task's weights get the gradient of its own loss.
                loss = (self.task_losses(logits, masks) + soft_dice_loss(logits, masks)).sum()
                flat = [tensor for pair in film for tensor in pair]
                grads = torch.autograd.grad(loss, flat, create_graph=self.training and not self.first_order)
                flat = [tensor - self.inner_lr * grad for tensor, grad in zip(flat, grads)]
                film = list(zip(flat[::2], flat[1::2]))
        if not self.training:
            reference = Reference(*([t.detach() for t in part] if isinstance(part, list) else part.detach()
                                    for part in reference[:2]))
            film = [(weight.detach(), bias.detach()) for weight, bias in film]
        return reference._replace(film=film)


def _build(context: Any) -> SiameseUNetANIL:
    cfg = context.cfg
    return SiameseUNetANIL(cfg.model.conv_channels, cfg.method.inner_lr, cfg.method.inner_steps,
                           cfg.method.eval_inner_steps, cfg.method.first_order)


SPECS = (MethodSpec("siamese-unet-anil", SiameseUNetANIL, _build,
                    GRADIENT_OPTIONS, segmentation=True),)
