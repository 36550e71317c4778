"""Meta-SGD (Li, Zhou, Chen and Li, 2017): MAML with a learned step per weight.

The inner update becomes phi_i = theta - alpha ∘ grad L_support(T_i; theta),
where alpha has the shape of theta and is meta-trained jointly with it by the
same outer optimizer, so the method learns both where to start and which
direction and how far to step.
"""
from __future__ import annotations

import torch
from torch import nn

from fastadapt.algorithms.maml import MAML, Params


class MetaSGD(MAML):
    def __init__(self, model: nn.Module, loss: str, inner_lr: float = 0.01, **maml_options) -> None:
        super().__init__(model, loss, inner_lr=inner_lr, **maml_options)
        # alpha starts at the MAML step size everywhere; nn.ParameterDict names cannot hold dots.
        self.inner_rates = nn.ParameterDict(
            {name.replace(".", "/"): nn.Parameter(torch.full_like(p, inner_lr)) for name, p in model.named_parameters()}
        )

    def inner_learning_rates(self) -> Params:
        return {name.replace("/", "."): rate for name, rate in self.inner_rates.items()}
