"""Meta-SGD's learned step sizes (Li, Zhou, Chen and Li, 2017): one per weight, shaped like it, shared by the
supervised ``MetaSGD`` and ``MetaSGDRL``.

An ``nn.ParameterDict`` keyed by the weights' names, so the step sizes are meta-parameters (trained by the
outer update, saved in checkpoints) beside the network's; ParameterDict keys cannot hold dots, so they are
stored with "/" and handed out under the weights' own names.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class StepSizes(nn.ParameterDict):
    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]], initial: float) -> None:
        super().__init__({name.replace(".", "/"): nn.Parameter(torch.full_like(p, initial))
                          for name, p in named_parameters})

    def by_weight(self) -> dict[str, torch.Tensor]:
        """The step size of every weight, under the weight's name (as ``named_parameters`` gives it)."""
        return {name.replace("/", "."): rate for name, rate in self.items()}
