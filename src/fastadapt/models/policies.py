"""Policies: networks that map observations to a distribution over actions.

* ``GaussianMLPPolicy``: continuous actions, a 2 x 100 ReLU MLP for the mean and a learned log-std per action
  dimension (Finn et al.'s MAML-RL policy);
* ``CategoricalMLPPolicy``: discrete actions, the same MLP giving logits;
* ``RecurrentPolicy``: RL^2's GRU policy. It reads the observation with the previous action, reward and
  end-of-episode flag, and its hidden state carries across the episodes of a trial: what it learns about the
  MDP lives there. It also outputs a value estimate (for PPO).

The maths of a distribution (sample from counter-based noise, log-likelihood, KL, entropy) lives in
``CategoricalActions`` / ``GaussianActions``, which every policy exposes as ``policy.actions``; the network
outputs the distribution's parameters (logits, or (mean, log_std)). Actions are in the environment's units:
a Gaussian policy works in units of the action space's half-width (``spaces.action_scale``, 0.1 for 2D
navigation), as the paper's code did by normalising the environment, so that an initial standard deviation
of 1 explores the whole action range.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fastadapt.environments import Spaces
from fastadapt.environments import noise as counter_noise
from fastadapt.models.mlp import MLP
from fastadapt.threads import network_built

Params = dict[str, torch.Tensor]
Distribution = Any  # logits (categorical) or a (mean, log_std) pair (Gaussian)


class CategoricalActions:
    """Distribution maths for discrete actions; the distribution is a tensor of logits (..., actions)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def noise(self, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """One uniform per step: (*seeds.shape, steps, 1)."""
        return counter_noise.uniform(seeds[..., None], steps)[..., None]

    def sample(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF sampling with the given uniforms: the first action whose cumulative probability exceeds u."""
        cdf = F.softmax(logits.double(), -1).cumsum(-1)
        return (cdf < noise).sum(-1).clamp(max=self.size - 1)

    def log_prob(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, -1).gather(-1, actions[..., None].long()).squeeze(-1)

    def kl(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        old_log, new_log = F.log_softmax(old, -1), F.log_softmax(new, -1)
        return (old_log.exp() * (old_log - new_log)).sum(-1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, -1)
        return -(log_p.exp() * log_p).sum(-1)

    def detach(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.detach()

    def select(self, logits: torch.Tensor, index: Any) -> torch.Tensor:
        return logits[index]


class GaussianActions:
    """Distribution maths for continuous actions: a diagonal Gaussian given as (mean, log_std) in env units."""

    def __init__(self, size: int) -> None:
        self.size = size

    def noise(self, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Standard normals: (*seeds.shape, steps, size)."""
        return counter_noise.normal(seeds[..., None, None], steps[:, None],
                                   torch.arange(self.size, device=seeds.device))

    def sample(self, dist: tuple[torch.Tensor, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = dist
        return mean + log_std.exp() * noise.to(mean.dtype)

    def log_prob(self, dist: tuple[torch.Tensor, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = dist
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def kl(self, old: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (old_mean, old_log_std), (new_mean, new_log_std) = old, new
        ratio = torch.exp(2 * (old_log_std - new_log_std))
        shift = (old_mean - new_mean) * torch.exp(-new_log_std)
        return (0.5 * (ratio + shift * shift - 1) - (old_log_std - new_log_std)).sum(-1)

    def entropy(self, dist: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, log_std = dist
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def detach(self, dist: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return dist[0].detach(), dist[1].detach()

    def select(self, dist: tuple[torch.Tensor, torch.Tensor], index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return dist[0][index], dist[1][index]


def action_maths(spaces: Spaces) -> CategoricalActions | GaussianActions:
    return (CategoricalActions if spaces.action_kind == "discrete" else GaussianActions)(spaces.action_size)


class MLPPolicy(nn.Module):
    """Base of the feed-forward policies: ``distribution(obs, params)`` with shared or per-task parameters."""

    recurrent = False

    def __init__(self, spaces: Spaces, output_size: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.spaces = spaces
        self.actions = action_maths(spaces)
        self.net = MLP(spaces.observation_size, output_size, tuple(hidden_sizes))

    def distribution(self, observations: torch.Tensor, params: Params | None = None) -> Distribution:
        """The action distribution at observations (tasks, ..., obs). With ``params`` (each with a leading task
        dimension: adapted weights) every task uses its own parameters, in one vmapped call."""
        if params is None:
            return self(observations)
        return vmap(lambda p, obs: functional_call(self, p, (obs,)))(params, observations)

    # the rollout interface (feed-forward policies keep no memory)
    def initial_memory(self, batch_shape: tuple[int, ...], like: torch.Tensor) -> None:
        return None

    def act(self, observations: torch.Tensor, memory: None, params: Params | None = None):
        return self.distribution(observations, params), None, None

    def remember(self, previous: None, current: None, actions, rewards, dones, alive) -> None:
        return None


class GaussianMLPPolicy(MLPPolicy):
    """mean = scale * MLP(obs), std = scale * exp(log_std); log_std is learned, one per action dimension."""

    def __init__(self, spaces: Spaces, hidden_sizes: tuple[int, ...] = (100, 100), init_log_std: float = 0.0) -> None:
        if spaces.action_kind != "continuous":
            raise ValueError(f"a Gaussian policy needs continuous actions, but this task's actions are "
                             f"{spaces.action_kind}: use a categorical policy")
        super().__init__(spaces, spaces.action_size, hidden_sizes)
        self.log_std = nn.Parameter(torch.full((spaces.action_size,), float(init_log_std)))
        self.scale = spaces.action_scale

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.scale * self.net(observations)
        log_std = (self.log_std + math.log(self.scale)).expand_as(mean)
        return mean, log_std


class CategoricalMLPPolicy(MLPPolicy):
    def __init__(self, spaces: Spaces, hidden_sizes: tuple[int, ...] = (100, 100)) -> None:
        if spaces.action_kind != "discrete":
            raise ValueError(f"a categorical policy needs discrete actions, but this task's actions are "
                             f"{spaces.action_kind}: use a Gaussian policy")
        super().__init__(spaces, spaces.action_size, hidden_sizes)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations)


def mlp_policy(spaces: Spaces, hidden_sizes: tuple[int, ...] = (100, 100)) -> MLPPolicy:
    """The feed-forward policy that fits the action space."""
    if spaces.action_kind == "continuous":
        return GaussianMLPPolicy(spaces, hidden_sizes)
    return CategoricalMLPPolicy(spaces, hidden_sizes)


class RecurrentPolicy(nn.Module):
    """RL^2's policy: a GRU over (observation, previous action, previous reward, previous end-of-episode flag).

    The memory of a rollout is a dict: ``hidden`` (..., hidden_size) and the previous step's ``action``
    features, ``reward`` and ``done``. It is reset only at the start of a trial, never between episodes.
    """

    recurrent = True

    def __init__(self, spaces: Spaces, hidden_size: int = 256, init_log_std: float = 0.0) -> None:
        super().__init__()
        network_built("gru")  # torch's thread count for this network (fastadapt.threads)
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.spaces = spaces
        self.actions = action_maths(spaces)
        self.discrete = spaces.action_kind == "discrete"
        self.input_size = spaces.observation_size + spaces.action_size + 2
        self.gru = nn.GRU(self.input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, spaces.action_size)
        self.value_head = nn.Linear(hidden_size, 1)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((spaces.action_size,), float(init_log_std)))
        self.hidden_size = hidden_size

    def action_features(self, actions: torch.Tensor) -> torch.Tensor:
        """One-hot for discrete actions, the action itself (in units of the action scale) for continuous ones."""
        if self.discrete:
            return F.one_hot(actions.long(), self.spaces.action_size).to(self.gru.weight_ih_l0.dtype)
        return actions / self.spaces.action_scale

    def initial_memory(self, batch_shape: tuple[int, ...], like: torch.Tensor) -> dict[str, torch.Tensor]:
        zeros = like.new_zeros
        return {"hidden": zeros(*batch_shape, self.hidden_size), "action": zeros(*batch_shape, self.spaces.action_size),
                "reward": zeros(*batch_shape, 1), "done": zeros(*batch_shape, 1)}

    def _distribution(self, hidden: torch.Tensor) -> Distribution:
        out = self.head(hidden)
        if self.discrete:
            return out
        scale = self.spaces.action_scale
        return scale * out, (self.log_std + math.log(scale)).expand_as(out)

    def act(self, observations: torch.Tensor, memory: dict[str, torch.Tensor], params: None = None):
        """One step for a batch of any shape (..., obs): (distribution, value, memory after this step)."""
        if params is not None:
            raise ValueError("RL^2 adapts through its hidden state, not through per-task parameters")
        inputs = torch.cat([observations, memory["action"], memory["reward"], memory["done"]], -1)
        batch_shape = inputs.shape[:-1]
        _, hidden = self.gru(inputs.reshape(-1, 1, self.input_size), memory["hidden"].reshape(1, -1, self.hidden_size))
        hidden = hidden.reshape(*batch_shape, self.hidden_size)
        return self._distribution(hidden), self.value_head(hidden).squeeze(-1), {**memory, "hidden": hidden}

    def sequence(self, observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                 dones: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        """Distributions and values along whole trials (..., steps, ...) in one GRU call: what ``act`` gives step
        by step when every step happened (no episode ended early), with each step's inputs the previous step's
        action, reward and end flag (zeros at the start of the trial)."""
        batch_shape, steps = observations.shape[:-2], observations.shape[-2]
        previous = torch.cat([self.action_features(actions), rewards[..., None], dones[..., None]], -1)
        previous = torch.cat([torch.zeros_like(previous[..., :1, :]), previous[..., :-1, :]], -2)
        inputs = torch.cat([observations, previous], -1).reshape(-1, steps, self.input_size)
        hidden, _ = self.gru(inputs)
        hidden = hidden.reshape(*batch_shape, steps, self.hidden_size)
        return self._distribution(hidden), self.value_head(hidden).squeeze(-1)

    def remember(self, previous: dict, current: dict, actions: torch.Tensor, rewards: torch.Tensor,
                 dones: torch.Tensor, alive: torch.Tensor) -> dict[str, torch.Tensor]:
        """The memory for the next step: after a step that did not happen (episode over early), the old one."""
        keep = alive[..., None]
        return {"hidden": torch.where(keep, current["hidden"], previous["hidden"]),
                "action": torch.where(keep, self.action_features(actions), previous["action"]),
                "reward": torch.where(keep, rewards[..., None], previous["reward"]),
                "done": torch.where(keep, dones[..., None].to(rewards.dtype), previous["done"])}
