"""The reinforcement-learning machinery meta-RL methods share: batched rollouts, returns and GAE, the linear
feature baseline, policy-gradient objectives, TRPO."""
from fastadapt.rl.baseline import fit_linear_baseline, linear_baseline_values
from fastadapt.rl.objectives import clipped_surrogate_loss, policy_gradient_loss, surrogate_loss
from fastadapt.rl.returns import discounted_returns, gae, masked_mean_per_task, normalize_per_task
from fastadapt.rl.rollout import Episodes, replay, rollout
from fastadapt.rl.trpo import TRPOSettings, conjugate_gradient, trpo_step

__all__ = ["Episodes", "rollout", "replay", "discounted_returns", "gae", "normalize_per_task", "masked_mean_per_task",
           "fit_linear_baseline", "linear_baseline_values", "policy_gradient_loss", "surrogate_loss",
           "clipped_surrogate_loss", "TRPOSettings", "conjugate_gradient", "trpo_step"]
