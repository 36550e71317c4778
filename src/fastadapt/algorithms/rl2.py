"""RL^2: fast reinforcement learning via slow reinforcement learning (Duan et al. 2016).

A recurrent policy (a GRU, ``RecurrentPolicy``) reads at every step the observation together with the
previous action, reward and end-of-episode flag, and keeps its hidden state across all the episodes of a
trial in the same MDP. Whatever it learns about the MDP (which arm pays, where the rewarding states are)
lives in that hidden state: the "fast" learning algorithm is the GRU's forward pass. The GRU's weights are
the "slow" part, trained by ordinary policy optimisation to maximise the total discounted reward of whole
trials over the task distribution (the discount runs across episode boundaries).

Deviation from the paper: Duan et al. train with TRPO; here the slow learner is PPO (Schulman et al. 2017:
clipped surrogate, several epochs of Adam steps on each batch of trials, a value head on the GRU with GAE),
which is simpler and needs no second-order machinery for a recurrent policy. The paper's value function was
a separate baseline network; ours shares the GRU, so ``value_coef`` sets how much the value loss shapes the
GRU: its gradient can be a hundred times the policy's (returns of 100 pulls are large numbers), and with the
whole gradient clipped to ``max_grad_norm`` the policy then barely moves. An entropy bonus keeps a nearly
deterministic policy able to change (docs/results.md, bandits).

Adaptation needs no gradient step: evaluation runs each test MDP for one trial and reports its total reward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastadapt.algorithms.base import RLMetaLearner
from fastadapt.algorithms.maml_rl import check_rewards
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.models.policies import RecurrentPolicy
from fastadapt.options import NON_NEGATIVE, OPEN_UNIT_INTERVAL, POSITIVE, POSITIVE_INT, Options, setting
from fastadapt.rl import Episodes, clipped_surrogate_loss, gae, masked_mean_per_task, replay, rollout
from fastadapt.rl.returns import ReturnOptions
from fastadapt.tasks.mdp import MDPBatch


@dataclass(frozen=True)
class PPOOptions(Options):
    """RL^2's outer loop: proximal policy optimisation."""

    ppo_clip: float = setting(0.2, "PPO (rl2): clip range of the probability ratio", rule=OPEN_UNIT_INTERVAL)
    ppo_epochs: int = setting(5, "PPO (rl2): passes over each batch of trials", rule=POSITIVE_INT)
    ppo_minibatches: int = setting(4, "PPO (rl2): minibatches of trials per pass", rule=POSITIVE_INT)
    value_coef: float = setting(0.5, "PPO (rl2): weight of the value loss", rule=NON_NEGATIVE)
    entropy_coef: float = setting(0.0, "PPO (rl2): weight of the entropy bonus", rule=NON_NEGATIVE)
    max_grad_norm: float = setting(1.0, "PPO (rl2): gradients are clipped to this norm", rule=POSITIVE)


class RL2(RLMetaLearner):
    def __init__(self, policy: RecurrentPolicy, trials: int = 1, gamma: float = 0.99, gae_lambda: float = 0.3,
                 clip: float = 0.2, epochs: int = 5, minibatches: int = 4, value_coef: float = 0.5,
                 entropy_coef: float = 0.0, max_grad_norm: float = 1.0) -> None:
        super().__init__()
        if not getattr(policy, "recurrent", False):
            raise ValueError("RL^2 needs a recurrent policy (its hidden state is what adapts)")
        for name, value in (("trials", trials), ("epochs", epochs), ("minibatches", minibatches)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        ReturnOptions(gamma, gae_lambda)
        PPOOptions(clip, epochs, minibatches, value_coef, entropy_coef, max_grad_norm)
        self.policy = policy
        self.trials, self.epochs, self.minibatches = trials, epochs, minibatches
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.clip, self.value_coef, self.entropy_coef = clip, value_coef, entropy_coef
        self.max_grad_norm = max_grad_norm

    def sample(self, tasks: MDPBatch, trials: int) -> Episodes:
        episodes = rollout(tasks.env, self.policy, tasks.trajectory_seeds(trials, 0))
        check_rewards(episodes)
        return episodes

    def ppo_loss(self, episodes: Episodes, advantages: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Clipped surrogate + value regression - entropy bonus, each averaged over the trials' valid steps."""
        dist, values = replay(self.policy, episodes)
        log_probs = self.policy.actions.log_prob(dist, episodes.actions)
        masks = episodes.masks
        policy_loss = clipped_surrogate_loss(log_probs, episodes.log_probs, advantages, masks, self.clip).mean()
        value_loss = masked_mean_per_task(0.5 * (values - targets) ** 2, masks).mean()
        entropy = masked_mean_per_task(self.policy.actions.entropy(dist), masks).mean()
        loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy
        approx_kl = masked_mean_per_task(episodes.log_probs - log_probs, masks).mean()
        return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(),
                      "approx_kl": approx_kl.item()}

    def meta_update(self, tasks: MDPBatch, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        if optimizer is None:
            raise ValueError("RL^2 trains with PPO and needs an optimizer (Adam)")
        episodes = self.sample(tasks, self.trials)
        advantages = gae(episodes.rewards, episodes.values, episodes.masks, self.gamma, self.gae_lambda)
        targets = advantages + episodes.values
        valid = episodes.masks.bool()
        advantages = (advantages - advantages[valid].mean()) / (advantages[valid].std() + 1e-8) * episodes.masks
        # Trials are the unit of a minibatch: (tasks, trials, ...) -> (tasks * trials, 1, ...).
        flat = Episodes(**{name: (getattr(episodes, name).flatten(0, 1)[:, None] if name != "times"
                                  else episodes.times) for name in episodes.__dataclass_fields__})
        advantages, targets = advantages.flatten(0, 1)[:, None], targets.flatten(0, 1)[:, None]
        count = flat.rewards.shape[0]
        size = -(-count // self.minibatches)
        # The minibatch order is drawn from the batch's own seeds, so a resumed run repeats it.
        generator = torch.Generator().manual_seed(int(tasks.seeds[0]))
        logged: dict[str, float] = {}
        for _ in range(self.epochs):
            order = torch.randperm(count, generator=generator)
            for start in range(0, count, size):
                index = order[start : start + size].to(flat.rewards.device)
                loss, logged = self.ppo_loss(flat.select(index), advantages[index], targets[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                optimizer.step()
        return {"return": episodes.returns.mean().item(), **logged}

    @torch.no_grad()
    def evaluate_returns(self, tasks: MDPBatch, steps: list[int] | None = None) -> dict[int | None, torch.Tensor]:
        """Each task's total reward over one trial (its hidden state starts fresh)."""
        return {None: self.sample(tasks, 1).returns.mean(1)}


def _build(context) -> RL2:
    method = context.cfg.method
    return RL2(context.model(), trials=context.cfg.task.trajectories, gamma=method.gamma,
               gae_lambda=method.gae_lambda, clip=method.ppo_clip,
               epochs=method.ppo_epochs, minibatches=method.ppo_minibatches, value_coef=method.value_coef,
               entropy_coef=method.entropy_coef, max_grad_norm=method.max_grad_norm)


SPECS = (MethodSpec("rl2", RL2, _build, (ReturnOptions, PPOOptions), rl=True, policy="gru",
                    splits_over_processes=False, defaults={"gae_lambda": 0.3}),)
