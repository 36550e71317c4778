"""2D navigation (Finn et al. 2017, section 5.3): a point moves to a goal it cannot see.

The agent starts at the origin; an action is a velocity, clipped to
[-0.1, 0.1] per axis; the position moves by it. Reward: minus the Euclidean
(L2) distance to the goal after the move. The episode ends when the agent is
within 0.01 of the goal, or after ``horizon`` (100) steps.

Reward definition: the paper's text says "negative squared distance", but the
authors' code (rllab PointEnvRandGoal) pays -L2 distance, and the returns the
paper reports (about -40 before adaptation, a policy hovering near the origin
with goals ~0.38 away for 100 steps) are on the L2 scale (squared distances
would give about -17). We follow the code.

With ``observe_goal`` the observation also holds the goal: the "oracle" the
paper compares with.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from fastadapt.environments.base import BatchedEnv, Spaces, check_positive

MAX_SPEED = 0.1
GOAL_RADIUS = 0.01
HORIZON = 100
#: goals of the default task distribution (the paper's unit square around the origin)
GOAL_RANGE = (-0.5, 0.5)


def navigation_spaces(observe_goal: bool) -> Spaces:
    return Spaces(observation_size=4 if observe_goal else 2, action_kind="continuous", action_size=2,
                  action_scale=MAX_SPEED)


@dataclass
class BatchedNavigation2D(BatchedEnv):
    """All tasks x trajectories at once. ``goals``: (tasks, 2); its dtype is the simulation's."""

    goals: torch.Tensor
    horizon: int = HORIZON
    observe_goal: bool = False

    def __post_init__(self) -> None:
        check_positive("horizon", self.horizon)
        if self.goals.dim() != 2 or self.goals.shape[1] != 2:
            raise ValueError(f"goals must have shape (tasks, 2), got {tuple(self.goals.shape)}")
        self.spaces = navigation_spaces(self.observe_goal)

    def _observe(self) -> torch.Tensor:
        if not self.observe_goal:
            return self.positions  # never modified in place: each step makes a new tensor
        return torch.cat([self.positions, self.goals[:, None].expand_as(self.positions)], dim=-1)

    def _start_episode(self, trajectories: int) -> torch.Tensor:
        self.positions = self.goals.new_zeros(self.num_tasks, trajectories, 2)
        return self._observe()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._count_step()
        if actions.shape != self.positions.shape:
            raise ValueError(f"actions must have shape {tuple(self.positions.shape)}, got {tuple(actions.shape)}")
        self.positions = self.positions + actions.to(self.positions.dtype).clamp(-MAX_SPEED, MAX_SPEED)
        distance = (self.positions - self.goals[:, None]).square().sum(-1).sqrt()
        return self._observe(), -distance, distance < GOAL_RADIUS


class Navigation2DEnv(gymnasium.Env):
    """The gymnasium version, one agent. The goal: ``goal=`` at construction, ``reset(options={"goal": ...})``,
    or else drawn uniformly from ``goal_range`` squared by the env's own seeded generator at ``reset(seed=...)``."""

    metadata = {"render_modes": []}

    def __init__(self, goal=None, horizon: int = HORIZON, observe_goal: bool = False,
                 goal_range: tuple[float, float] = GOAL_RANGE) -> None:
        self.horizon = check_positive("horizon", horizon)
        self.observe_goal, self.goal_range = observe_goal, goal_range
        self.reach = horizon * MAX_SPEED  # no position (and no goal worth observing) lies farther out
        self._given_goal = None if goal is None else self._check_goal(goal)
        self.goal = self._given_goal
        size = navigation_spaces(observe_goal).observation_size
        self.observation_space = spaces.Box(-self.reach, self.reach, (size,), np.float32)
        self.action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, (2,), np.float32)

    def _check_goal(self, goal) -> np.ndarray:
        goal = np.asarray(goal, dtype=np.float64)
        if goal.shape != (2,) or not (np.abs(goal) <= self.reach).all():
            raise ValueError(f"goal must be two numbers within the reachable [-{self.reach}, {self.reach}], "
                             f"got {goal!r}")
        return goal

    def _observe(self) -> np.ndarray:
        parts = [self.position, self.goal] if self.observe_goal else [self.position]
        return np.concatenate(parts).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "goal" in options:
            self.goal = self._check_goal(options["goal"])
        elif self._given_goal is None and (seed is not None or self.goal is None):
            self.goal = self.np_random.uniform(*self.goal_range, size=2)
        self.position = np.zeros(2)
        self.t = 0
        return self._observe(), {"goal": self.goal.copy()}

    def step(self, action):
        velocity = np.clip(np.asarray(action, dtype=np.float64), -MAX_SPEED, MAX_SPEED)
        self.position = self.position + velocity
        dx, dy = self.position - self.goal
        distance = float(np.sqrt(dx * dx + dy * dy))
        self.t += 1
        terminated = distance < GOAL_RADIUS
        return self._observe(), -distance, terminated, self.t >= self.horizon and not terminated, {}
