"""Bernoulli multi-armed bandits (Duan et al. 2016, RL^2, section 4.1).

k arms; pulling arm a pays 1 with probability p_a, else 0. One episode is a
trial of ``pulls`` (n) pulls of the same bandit: the agent must explore the
arms and exploit the best one within it. The observation carries nothing
(always the same single state); everything an agent learns comes from the
rewards of its own pulls.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from fastadapt.environments import noise
from fastadapt.environments.base import BatchedEnv, Spaces, check_positive


@dataclass
class BatchedBernoulliBandit(BatchedEnv):
    """``probabilities``: (tasks, arms), the success probability of every arm; ``horizon``: pulls per trial."""

    probabilities: torch.Tensor
    horizon: int = 100

    def __post_init__(self) -> None:
        check_positive("pulls (horizon)", self.horizon)
        if self.probabilities.dim() != 2 or self.probabilities.shape[1] < 2:
            raise ValueError(f"probabilities must have shape (tasks, arms >= 2), got {tuple(self.probabilities.shape)}")
        self.spaces = Spaces(observation_size=1, action_kind="discrete", action_size=self.probabilities.shape[1])

    def _start_episode(self, trajectories: int) -> torch.Tensor:
        steps = torch.arange(self.horizon, device=self.device)
        self._uniforms = noise.uniform(self._seeds[..., None], self._episode, steps)  # (tasks, trajectories, pulls)
        return self.probabilities.new_ones(self.num_tasks, trajectories, 1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self._count_step()
        if t >= self.horizon:
            raise ValueError(f"step {t + 1} of a trial of {self.horizon} pulls: reset first")
        arms = self.probabilities[:, None].expand(*actions.shape, -1)
        chosen = arms.gather(-1, actions[..., None].long()).squeeze(-1)
        rewards = (self._uniforms[..., t] < chosen).to(self.probabilities.dtype)
        return self.probabilities.new_ones(*actions.shape, 1), rewards, torch.zeros_like(rewards, dtype=torch.bool)


class BernoulliBanditEnv(gymnasium.Env):
    """The gymnasium version: one bandit, one trial of ``pulls`` pulls per episode. The arms: ``probabilities=``,
    ``reset(options={"probabilities": ...})``, or else drawn from U[0, 1] at ``reset(seed=...)``."""

    metadata = {"render_modes": []}

    def __init__(self, arms: int = 10, pulls: int = 100, probabilities=None) -> None:
        self.arms, self.pulls = check_positive("arms", arms), check_positive("pulls", pulls)
        self._given = None if probabilities is None else self._check(probabilities)
        self.probabilities = self._given
        self.observation_space = spaces.Discrete(1)
        self.action_space = spaces.Discrete(arms)
        self._noise_seed: int | None = None

    def _check(self, probabilities) -> np.ndarray:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (self.arms,) or not ((p >= 0) & (p <= 1)).all():
            raise ValueError(f"probabilities must be {self.arms} numbers in [0, 1], got {probabilities!r}")
        return p

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "probabilities" in options:
            self.probabilities = self._check(options["probabilities"])
        elif self._given is None and (seed is not None or self.probabilities is None):
            self.probabilities = self.np_random.uniform(0.0, 1.0, size=self.arms)
        if seed is not None or self._noise_seed is None:
            self._noise_seed = int(seed) if seed is not None else int(self.np_random.integers(2**32))
            self._episode = 0
        else:
            self._episode += 1
        self._uniforms = noise.uniform(torch.tensor(self._noise_seed), self._episode, torch.arange(self.pulls)).numpy()
        self.t = 0
        return 0, {"probabilities": self.probabilities.copy()}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm in 0..{self.arms - 1}, got {action!r}")
        reward = float(self._uniforms[self.t] < self.probabilities[int(action)])
        self.t += 1
        return 0, reward, False, self.t >= self.pulls, {}
