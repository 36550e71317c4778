"""The policy-gradient objectives: vanilla policy gradient (REINFORCE with a baseline), the importance-
sampled surrogate TRPO maximises, and PPO's clipped surrogate. Each is a loss to minimise, one per task
(first dimension), averaged over the task's valid steps."""
from __future__ import annotations

import torch

from fastadapt.rl.returns import masked_mean_per_task


def policy_gradient_loss(log_probs: torch.Tensor, advantages: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """-mean_t log pi(a_t | s_t) A_t: its gradient is the policy-gradient estimate (advantages are constants)."""
    return -masked_mean_per_task(log_probs * advantages.detach(), masks)


def surrogate_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                   masks: torch.Tensor) -> torch.Tensor:
    """-mean_t ratio_t A_t with ratio = pi / pi_old: the same gradient as ``policy_gradient_loss`` at pi = pi_old."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    return -masked_mean_per_task(ratio * advantages.detach(), masks)


def clipped_surrogate_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                           masks: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO (Schulman et al. 2017): -mean_t min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)."""
    if not 0 < clip < 1:
        raise ValueError(f"the PPO clip range must lie in (0, 1), got {clip}")
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantages = advantages.detach()
    clipped = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -masked_mean_per_task(clipped, masks)
