"""Discounted returns, generalised advantage estimation (GAE) and advantage normalisation.

All work on padded tensors (..., steps) whose padded steps hold zero reward and zero mask. A sum
discounted over future steps is one matrix product with the triangular matrix of powers factor**(j - i),
instead of a Python loop over time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastadapt.options import UNIT_INTERVAL, Options, check_option, setting


@dataclass(frozen=True)
class ReturnOptions(Options):
    """How the RL methods weigh future rewards."""

    gamma: float = setting(0.99, "RL: discount factor", rule=UNIT_INTERVAL)
    gae_lambda: float | None = setting(None, "RL: lambda of generalised advantage estimation (default: 1.0 for "
                                             "maml-rl, metasgd-rl and pretrained-rl, as the MAML paper's code; 0.3 "
                                             "for rl2)", rule=UNIT_INTERVAL)


def discount_matrix(length: int, factor: float, like: torch.Tensor) -> torch.Tensor:
    """M[j, i] = factor**(j - i) for j >= i, else 0: (x @ M)[i] = sum_{j >= i} factor**(j - i) x[j]."""
    steps = torch.arange(length, device=like.device, dtype=like.dtype)
    offsets = steps[:, None] - steps[None, :]
    return torch.where(offsets >= 0, factor ** offsets.clamp(min=0), torch.zeros((), dtype=like.dtype))


def check_discount(name: str, value: float) -> float:
    """``value`` of ``gamma`` or ``gae_lambda`` as a float, checked by its declared rule (``ReturnOptions``)."""
    check_option(ReturnOptions, name, value)
    return float(value)


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go of every step, sum_{j >= t} gamma**(j - t) r_j, along the last dimension."""
    return rewards @ discount_matrix(rewards.shape[-1], check_discount("gamma", gamma), rewards)


def gae(rewards: torch.Tensor, values: torch.Tensor, masks: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016) along the last dimension.

    delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 on padded steps and after the last one (an episode
    cut by the horizon is not bootstrapped, as in the papers' code); A_t = sum_j (gamma lam)**j delta_{t+j}.
    lam = 1 gives the discounted return minus the baseline.
    """
    values = values * masks
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + check_discount("gamma", gamma) * next_values - values) * masks
    return deltas @ discount_matrix(deltas.shape[-1], gamma * check_discount("gae_lambda", lam), deltas)


def normalize_per_task(advantages: torch.Tensor, masks: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean and unit standard deviation over the valid steps of each task (first dimension), as rllab's
    ``center_adv`` does per batch; padded steps stay 0."""
    dims = tuple(range(1, advantages.dim()))
    count = masks.sum(dims, keepdim=True).clamp(min=1)
    mean = (advantages * masks).sum(dims, keepdim=True) / count
    centred = (advantages - mean) * masks
    std = ((centred * centred).sum(dims, keepdim=True) / count).sqrt()
    return centred / (std + eps)


def masked_mean_per_task(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean over the valid steps of each task: (tasks, ...) -> (tasks,)."""
    dims = tuple(range(1, values.dim()))
    return (values * masks).sum(dims) / masks.sum(dims).clamp(min=1)
