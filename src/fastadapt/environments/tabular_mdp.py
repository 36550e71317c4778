"""Random tabular MDPs (Duan et al. 2016, RL^2, section 4.2).

``states`` (10) states and ``actions`` (5) actions. Taking action a in state
s pays a reward drawn from N(mu[s, a], 1) and moves to s' ~ P[s, a, :].
Episodes last ``horizon`` (10) steps and always start in state 0 (the
paper: "an episode always starts on the first state"); a trial is
``episodes`` episodes of the same MDP. The observation is the current state.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from fastadapt.environments import noise
from fastadapt.environments.base import BatchedEnv, Spaces, check_positive

REWARD_DRAW, TRANSITION_DRAW = 0, 1


def next_states(cdf_rows: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: the first state whose cumulative probability exceeds the uniform draw."""
    return (cdf_rows < uniforms[..., None]).sum(-1).clamp(max=cdf_rows.shape[-1] - 1)


@dataclass
class BatchedTabularMDP(BatchedEnv):
    """``transitions``: (tasks, states, actions, states) probabilities; ``reward_means``: (tasks, states, actions)."""

    transitions: torch.Tensor
    reward_means: torch.Tensor
    horizon: int = 10
    episodes: int = 1

    def __post_init__(self) -> None:
        check_positive("horizon", self.horizon)
        check_positive("episodes", self.episodes)
        t, s, a = self.reward_means.shape if self.reward_means.dim() == 3 else (None,) * 3
        if t is None or self.transitions.shape != (t, s, a, s):
            raise ValueError(f"transitions (tasks, states, actions, states) {tuple(self.transitions.shape)} and "
                             f"reward_means (tasks, states, actions) {tuple(self.reward_means.shape)} disagree")
        self.cdf = self.transitions.cumsum(-1)
        self.spaces = Spaces(observation_size=s, action_kind="discrete", action_size=a)

    def _observe(self) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.states, self.spaces.observation_size).to(self.reward_means.dtype)

    def _start_episode(self, trajectories: int) -> torch.Tensor:
        steps = torch.arange(self.horizon, device=self.device)
        seeds = self._seeds[..., None]
        self._reward_noise = noise.normal(seeds, self._episode, steps, REWARD_DRAW).to(self.reward_means.dtype)
        self._transition_uniforms = noise.uniform(seeds, self._episode, steps, TRANSITION_DRAW)
        self.states = torch.zeros(self.num_tasks, trajectories, dtype=torch.long, device=self.device)
        return self._observe()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self._count_step()
        if t >= self.horizon:
            raise ValueError(f"step {t + 1} of an episode of {self.horizon} steps: reset first")
        task = torch.arange(self.num_tasks, device=self.device)[:, None]
        actions = actions.long()
        rewards = self.reward_means[task, self.states, actions] + self._reward_noise[..., t]
        self.states = next_states(self.cdf[task, self.states, actions], self._transition_uniforms[..., t])
        return self._observe(), rewards, torch.zeros_like(rewards, dtype=torch.bool)


class TabularMDPEnv(gymnasium.Env):
    """The gymnasium version, one MDP; an episode is ``horizon`` steps. The MDP: ``transitions=`` and
    ``reward_means=``, ``reset(options={"transitions": ..., "reward_means": ...})``, or else drawn at
    ``reset(seed=...)`` as in RL^2 (flat Dirichlet transitions, means ~ N(1, 1)) and kept for later episodes."""

    metadata = {"render_modes": []}

    def __init__(self, states: int = 10, actions: int = 5, horizon: int = 10,
                 transitions=None, reward_means=None) -> None:
        self.num_states, self.num_actions = check_positive("states", states), check_positive("actions", actions)
        self.horizon = check_positive("horizon", horizon)
        self._given = None if transitions is None else self._check(transitions, reward_means)
        self.task = self._given
        self.observation_space = spaces.Discrete(states)
        self.action_space = spaces.Discrete(actions)
        self._noise_seed: int | None = None

    def _check(self, transitions, reward_means) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.asarray(transitions, dtype=np.float64)
        mu = np.asarray(reward_means, dtype=np.float64)
        s, a = self.num_states, self.num_actions
        if p.shape != (s, a, s) or mu.shape != (s, a):
            raise ValueError(f"transitions must be ({s}, {a}, {s}) and reward_means ({s}, {a}), "
                             f"got {p.shape} and {mu.shape}")
        if (p < 0).any() or not np.allclose(p.sum(-1), 1.0):
            raise ValueError("every transitions[s, a] must be a probability distribution over next states")
        return p, mu, torch.from_numpy(p).cumsum(-1).numpy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "transitions" in options:
            self.task = self._check(options["transitions"], options.get("reward_means"))
        elif self._given is None and (seed is not None or self.task is None):
            s, a = self.num_states, self.num_actions
            self.task = self._check(self.np_random.dirichlet(np.ones(s), size=(s, a)),
                                    self.np_random.normal(1.0, 1.0, size=(s, a)))
        if seed is not None or self._noise_seed is None:
            self._noise_seed = int(seed) if seed is not None else int(self.np_random.integers(2**32))
            self._episode = 0
        else:
            self._episode += 1
        seed_tensor, steps = torch.tensor(self._noise_seed), torch.arange(self.horizon)
        self._reward_noise = noise.normal(seed_tensor, self._episode, steps, REWARD_DRAW).numpy()
        self._uniforms = noise.uniform(seed_tensor, self._episode, steps, TRANSITION_DRAW).numpy()
        self.state, self.t = 0, 0
        return 0, {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be in 0..{self.num_actions - 1}, got {action!r}")
        _, reward_means, cdf = self.task
        reward = float(reward_means[self.state, action] + self._reward_noise[self.t])
        row = torch.from_numpy(cdf[self.state, action])
        self.state = int(next_states(row, torch.tensor(self._uniforms[self.t])))
        self.t += 1
        return self.state, reward, False, self.t >= self.horizon, {}
