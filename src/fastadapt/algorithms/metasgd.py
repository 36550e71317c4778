"""Meta-SGD (Li, Zhou, Chen and Li, 2017): MAML with a learned step per weight.

The inner update becomes phi_i = theta - alpha ∘ grad L_support(T_i; theta),
where alpha has the shape of theta and is meta-trained jointly with it by the
same outer optimizer, so the method learns both where to start and which
direction and how far to step.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from fastadapt.algorithms.maml import GRADIENT_OPTIONS, MAML, Params, build_gradient_based
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.algorithms.step_sizes import StepSizes


class MetaSGD(MAML):
    def __init__(self, model: nn.Module, loss: str, inner_lr: float = 0.01, **maml_options) -> None:
        super().__init__(model, loss, inner_lr=inner_lr, **maml_options)
        self.inner_rates = StepSizes(model.named_parameters(), inner_lr)  # alpha starts at MAML's step everywhere
        self.warned_past_training = False

    def inner_learning_rates(self) -> Params:
        return self.inner_rates.by_weight()

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """As MAML's; warns (once) when asked for more steps than it was trained with: its step sizes were
        learned for ``inner_steps`` steps only, and applied again they often overshoot (losses of 1e9, inf)."""
        taken = steps if steps is not None else self.inner_steps if self.training else self.eval_inner_steps
        if taken > self.inner_steps and not self.warned_past_training:
            self.warned_past_training = True
            warnings.warn(f"Meta-SGD learned its step sizes for {self.inner_steps} step"
                          f"{'s' * (self.inner_steps > 1)}; {taken} steps apply them past that, where they may "
                          f"blow up (results shown as 'diverged'). Evaluate at most {self.inner_steps} step"
                          f"{'s' * (self.inner_steps > 1)}, or train with --inner-steps {taken}", stacklevel=2)
        return super().adapt(support_x, support_y, steps)


SPECS = (MethodSpec("metasgd", MetaSGD, build_gradient_based(MetaSGD), GRADIENT_OPTIONS, gradient_based=True),)
