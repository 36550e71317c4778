"""Reptile (Nichol, Achiam and Schulman, 2018).

Each task is trained with plain SGD for ``inner_steps`` steps from theta,
giving phi_i; the outer update moves theta toward the adapted weights:

    theta <- theta + epsilon * mean_i (phi_i - theta)

No gradient flows through the inner loop. To share the trainer with the other
methods, ``meta_loss`` returns the surrogate 1/2 ||theta - mean_i phi_i||^2,
whose gradient is exactly theta - mean_i phi_i: an outer SGD step with rate
epsilon is the Reptile update, and Adam gives the common Adam-Reptile variant.
"""
from __future__ import annotations

import torch
from torch import nn

from fastadapt.algorithms.maml import GRADIENT_OPTIONS, MAML, build_gradient_based
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.tasks.base import TaskBatch


class Reptile(MAML):
    captures_whole_step = False  # its own meta_loss, not checked under capture
    def __init__(self, model: nn.Module, loss: str, inner_lr: float = 0.01, inner_steps: int = 5, **options) -> None:
        options.pop("first_order", None)
        super().__init__(model, loss, inner_lr=inner_lr, inner_steps=inner_steps, first_order=True, **options)

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        adapted = self.adapt(tasks.support_x, tasks.support_y)
        with torch.no_grad():
            outputs = self.predict(adapted, tasks.query_x)
            query_loss = self.task_losses(outputs, tasks.query_y).mean()
        surrogate = sum(
            0.5 * (theta - adapted[name].detach().mean(0)).pow(2).sum()
            for name, theta in self.model.named_parameters()
        )
        return surrogate, self.metrics(outputs, tasks.query_y, query_loss)


SPECS = (MethodSpec("reptile", Reptile, build_gradient_based(Reptile), GRADIENT_OPTIONS, gradient_based=True),)
