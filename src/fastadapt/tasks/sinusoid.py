"""Sinusoid regression tasks, as in the MAML paper (Finn et al. 2017, section 5.1).

Each task is y = A sin(x - phase) with A ~ U[0.1, 5.0], phase ~ U[0, pi] and
inputs x ~ U[-5, 5]; the learner sees K support points and is scored by MSE
on the query points.
"""
from __future__ import annotations

import math

import torch

from fastadapt.tasks.base import SPLIT_SEED_OFFSETS, TaskBatch

class SinusoidTasks:
    loss = "mse"
    output_size = 1
    input_size = 1

    def __init__(
        self,
        k_shot: int = 10,
        num_query: int | None = None,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        num_query = k_shot if num_query is None else num_query
        if k_shot < 1:
            raise ValueError(f"k_shot must be at least 1 support point per task, got {k_shot}")
        if num_query < 1:
            raise ValueError(f"num_query must be at least 1, got {num_query}")
        for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise ValueError(f"{name} range must have low <= high, got ({low}, {high})")
        self.k_shot, self.num_query = k_shot, num_query
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    def sample_functions(self, num_tasks: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases of ``num_tasks`` sinusoids, each of shape (tasks, 1, 1)."""
        u = torch.rand(2, num_tasks, 1, 1, generator=generator)
        amp = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0]
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1]
        return amp, phase

    @staticmethod
    def evaluate(amp: torch.Tensor, phase: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return amp * torch.sin(x - phase)

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        amp, phase = self.sample_functions(num_tasks, generator)
        low, high = self.x_range
        x = low + (high - low) * torch.rand(num_tasks, self.k_shot + self.num_query, 1, generator=generator)
        y = self.evaluate(amp, phase, x)
        k = self.k_shot
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0) -> TaskBatch:
        if split not in SPLIT_SEED_OFFSETS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEED_OFFSETS)}")
        generator = torch.Generator().manual_seed(seed + SPLIT_SEED_OFFSETS[split])
        return self.sample(num_tasks, generator)
