"""Fully connected networks (the MAML paper's 1-40-40-1 ReLU regressor by default)."""
from __future__ import annotations

import torch
from torch import nn

from fastadapt.threads import network_built


class MLP(nn.Sequential):
    def __init__(self, input_size: int = 1, output_size: int = 1, hidden_sizes: tuple[int, ...] = (40, 40)) -> None:
        if input_size < 1 or output_size < 1 or any(h < 1 for h in hidden_sizes):
            raise ValueError(f"MLP sizes must be positive, got {input_size}, {hidden_sizes}, {output_size}")
        layers: list[nn.Module] = []
        width = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, output_size))
        super().__init__(*layers)
        network_built("mlp")  # torch's thread count for this network (fastadapt.threads)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            raise ValueError(f"MLP expects inputs whose last dimension is {self.input_size}, "
                             f"got shape {tuple(x.shape)}")
        return super().forward(x)
