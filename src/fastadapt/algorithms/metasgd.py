"""Meta-SGD (Li, Zhou, Chen and Li, 2017): MAML with a learned step per weight.

The inner update becomes phi_i = theta - alpha ∘ grad L_support(T_i; theta),
where alpha has the shape of theta and is meta-trained jointly with it by the
same outer optimizer, so the method learns both where to start and which
direction and how far to step.
"""
from __future__ import annotations

from torch import nn

from fastadapt.algorithms.maml import GRADIENT_OPTIONS, MAML, Params, build_gradient_based
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.algorithms.step_sizes import StepSizes


class MetaSGD(MAML):
    def __init__(self, model: nn.Module, loss: str, inner_lr: float = 0.01, **maml_options) -> None:
        super().__init__(model, loss, inner_lr=inner_lr, **maml_options)
        self.inner_rates = StepSizes(model.named_parameters(), inner_lr)  # alpha starts at MAML's step everywhere

    def inner_learning_rates(self) -> Params:
        return self.inner_rates.by_weight()


SPECS = (MethodSpec("metasgd", MetaSGD, build_gradient_based(MetaSGD), GRADIENT_OPTIONS, gradient_based=True),)
