"""Task distributions p(T) over MDPs: 2D navigation goals, Bernoulli bandits, random tabular MDPs, and the MuJoCo
locomotion goals (directions, velocities) of HalfCheetah and Ant.

A task is an MDP. ``sample(num_tasks, generator)`` draws a batch of them as an
``MDPBatch``: a batched simulator over the tasks' parameters (see
``fastadapt.environments``) plus one seed per task. Every random draw made
while acting in a task (its trajectories' noise, the policy's sampling noise)
derives from that seed, so a task's rollouts do not depend on which other
tasks share the batch or the process; fixed evaluation tasks
(``fixed_tasks``) are fully reproducible, rollouts included.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastadapt.environments import BatchedBernoulliBandit, BatchedEnv, BatchedNavigation2D, BatchedTabularMDP, Spaces
from fastadapt.environments.navigation import GOAL_RANGE, navigation_spaces
from fastadapt.environments.extras import require_mujoco
from fastadapt.environments.noise import derive_seeds
from fastadapt.environments.parallel import BatchedGymnasium
from fastadapt.tasks.base import SPLIT_SEED_OFFSETS, Batch

SEED_LIMIT = 2**32


@dataclass
class MDPBatch(Batch):
    """A batch of MDPs: ``env`` simulates all of them, ``seeds`` (tasks,) is each task's source of randomness."""

    env: BatchedEnv
    seeds: torch.Tensor

    def __post_init__(self) -> None:
        if self.seeds.shape != (self.env.num_tasks,):
            raise ValueError(f"MDPBatch needs one seed per task: {self.env.num_tasks} tasks, "
                             f"seeds of shape {tuple(self.seeds.shape)}")

    @property
    def num_tasks(self) -> int:
        return self.env.num_tasks

    def __getitem__(self, index: slice | torch.Tensor) -> "MDPBatch":
        return MDPBatch(self.env.select(index), self.seeds[index])

    def to(self, device: torch.device | str) -> "MDPBatch":
        return MDPBatch(self.env.to(device), self.seeds.to(device))

    def trajectory_seeds(self, trajectories: int, round_: int) -> torch.Tensor:
        """Seeds (tasks, trajectories) for the ``round_``-th batch of trajectories sampled in each task
        (round 0 before adaptation, round k after k adaptation steps)."""
        index = torch.arange(trajectories, device=self.seeds.device)
        return derive_seeds(self.seeds[:, None], round_, index)


class MDPTaskDistribution:
    """Shared by the families: seeds, fixed tasks by split. Subclasses define ``spaces`` and ``_env``."""

    spaces: Spaces

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def _env(self, num_tasks: int, generator: torch.Generator) -> BatchedEnv:
        raise NotImplementedError

    def _fixed_env(self, num_tasks: int, generator: torch.Generator) -> BatchedEnv:
        """The MDPs of fixed (validation, test) tasks: independent draws from p(T). The same draw as a training
        meta-batch's unless a family stratifies its meta-batches (``LocomotionTasks``'s balanced directions)."""
        return self._env(num_tasks, generator)

    def sample(self, num_tasks: int, generator: torch.Generator) -> MDPBatch:
        """A training meta-batch of ``num_tasks`` tasks."""
        return self._batch(num_tasks, generator, self._env)

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0) -> MDPBatch:
        """A reproducible set of tasks (and their seeds): the same arguments give the same MDPs and rollouts."""
        if split not in SPLIT_SEED_OFFSETS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEED_OFFSETS)}")
        generator = torch.Generator().manual_seed(seed + SPLIT_SEED_OFFSETS[split])
        return self._batch(num_tasks, generator, self._fixed_env)

    @staticmethod
    def _batch(num_tasks: int, generator: torch.Generator,
               make_env: Callable[[int, torch.Generator], BatchedEnv]) -> MDPBatch:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        env = make_env(num_tasks, generator)
        return MDPBatch(env, torch.randint(0, SEED_LIMIT, (num_tasks,), generator=generator))


class Navigation2DTasks(MDPTaskDistribution):
    """Finn et al.'s 2D navigation: goals uniform in ``goal_range`` squared ([-0.5, 0.5]^2), horizon 100.
    ``observe_goal`` gives the oracle's observations (position and goal)."""

    def __init__(self, horizon: int = 100, goal_range: tuple[float, float] = GOAL_RANGE, observe_goal: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(dtype)
        if not goal_range[0] < goal_range[1]:
            raise ValueError(f"goal_range must have low < high, got {goal_range}")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive number of steps, got {horizon!r}")
        self.horizon, self.goal_range, self.observe_goal = horizon, goal_range, observe_goal
        self.spaces = navigation_spaces(observe_goal)

    def _env(self, num_tasks: int, generator: torch.Generator) -> BatchedNavigation2D:
        low, high = self.goal_range
        goals = low + (high - low) * torch.rand(num_tasks, 2, generator=generator, dtype=self.dtype)
        return BatchedNavigation2D(goals, self.horizon, self.observe_goal)


class BanditTasks(MDPTaskDistribution):
    """RL^2's bandits: ``arms`` (k) Bernoulli arms with success probabilities ~ U[0, 1], ``pulls`` (n) per trial."""

    def __init__(self, arms: int = 10, pulls: int = 100, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(dtype)
        if not isinstance(arms, int) or arms < 2:
            raise ValueError(f"a bandit needs at least 2 arms, got {arms!r}")
        if not isinstance(pulls, int) or pulls < 1:
            raise ValueError(f"pulls (the horizon of a trial) must be a positive integer, got {pulls!r}")
        self.arms, self.pulls = arms, pulls
        self.spaces = Spaces(observation_size=1, action_kind="discrete", action_size=arms)

    def _env(self, num_tasks: int, generator: torch.Generator) -> BatchedBernoulliBandit:
        return BatchedBernoulliBandit(torch.rand(num_tasks, self.arms, generator=generator, dtype=self.dtype),
                                      self.pulls)


class TabularMDPTasks(MDPTaskDistribution):
    """RL^2's random MDPs: transitions P[s, a] ~ flat Dirichlet, mean rewards mu[s, a] ~ N(1, 1), rewards
    ~ N(mu, 1); episodes of ``horizon`` steps from state 0, ``episodes`` (n) episodes per trial."""

    def __init__(self, states: int = 10, actions: int = 5, horizon: int = 10, episodes: int = 10,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(dtype)
        for name, value in (("states", states), ("actions", actions), ("horizon", horizon), ("episodes", episodes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.states, self.actions, self.horizon, self.episodes = states, actions, horizon, episodes
        self.spaces = Spaces(observation_size=states, action_kind="discrete", action_size=actions)

    def _env(self, num_tasks: int, generator: torch.Generator) -> BatchedTabularMDP:
        shape = (num_tasks, self.states, self.actions)
        # A flat Dirichlet is a normalised vector of independent Exp(1) draws.
        exponential = -torch.log1p(-torch.rand(*shape, self.states, generator=generator, dtype=torch.float64))
        transitions = (exponential / exponential.sum(-1, keepdim=True)).to(self.dtype)
        reward_means = 1.0 + torch.randn(*shape, generator=generator, dtype=self.dtype)
        return BatchedTabularMDP(transitions, reward_means, self.horizon, self.episodes)


@dataclass(frozen=True)
class LocomotionFamily:
    """A MuJoCo locomotion task family: its gymnasium id, sizes, and its goal distribution: ``goal`` is "sign"
    (a direction -1 or +1, equally likely), "velocity" (uniform in [0, 2]) or "circle" (a unit vector, uniform)."""

    env_id: str
    title: str
    reward: str  # the per-step reward, in words, for tables
    observation_size: int
    action_size: int
    goal: str

    @property
    def task_size(self) -> int:
        return 2 if self.goal == "circle" else 1

    def draw(self, num_tasks: int, generator: torch.Generator, dtype: torch.dtype,
             balanced: bool = False) -> torch.Tensor:
        """(num_tasks, task_size) goals, from the distribution the environment itself draws from. ``balanced``
        ("sign" families): as many +1 as -1 goals (one random sign over when ``num_tasks`` is odd) in random
        order, so each goal is still +1 or -1 with probability 1/2 but a batch is never one-sided."""
        if self.goal == "sign":
            if not balanced:
                return (2 * torch.randint(0, 2, (num_tasks, 1), generator=generator) - 1).to(dtype)
            signs = torch.tensor([1, -1]).repeat_interleave(num_tasks // 2)
            if num_tasks % 2:
                signs = torch.cat([signs, 2 * torch.randint(0, 2, (1,), generator=generator) - 1])
            return signs[torch.randperm(num_tasks, generator=generator)].to(dtype)[:, None]
        if balanced:
            raise ValueError(f"balanced goals are for the forward/backward families, not {self.goal} goals")
        if self.goal == "velocity":
            return 2.0 * torch.rand(num_tasks, 1, generator=generator, dtype=dtype)
        angles = 2 * math.pi * torch.rand(num_tasks, generator=generator, dtype=torch.float64)
        return torch.stack([angles.cos(), angles.sin()], dim=-1).to(dtype)


#: --tasks name -> family (Finn et al. 2017, section 5.3; Rothfuss et al. 2019)
LOCOMOTION_FAMILIES = {
    "halfcheetah-fwd-bwd": LocomotionFamily("fastadapt/HalfCheetahForwardBackward-v0", "HalfCheetah forward/backward",
                                            "direction x forward velocity - control cost", 17, 6, "sign"),
    "halfcheetah-vel": LocomotionFamily("fastadapt/HalfCheetahVelocity-v0", "HalfCheetah goal velocity",
                                        "-|velocity - goal| - control cost", 17, 6, "velocity"),
    "ant-fwd-bwd": LocomotionFamily("fastadapt/AntForwardBackward-v0", "Ant forward/backward",
                                    "direction x forward velocity + 1 - control and contact costs", 105, 8, "sign"),
    "ant-direction": LocomotionFamily("fastadapt/AntDirection-v0", "Ant 2D direction",
                                      "direction . velocity + 1 - control and contact costs", 105, 8, "circle"),
}


class LocomotionTasks(MDPTaskDistribution):
    """A MuJoCo locomotion family (``LOCOMOTION_FAMILIES``); its trajectories run in ``workers`` rollout processes
    (0: in this process), which changes where they run, never what they are. ``balanced_directions`` (forward/
    backward families): each training meta-batch holds as many forward as backward tasks (``LocomotionFamily.draw``);
    fixed tasks stay independent draws, so validation and test sets do not depend on it."""

    def __init__(self, family: str, horizon: int = 200, workers: int = 2, balanced_directions: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(dtype)
        if family not in LOCOMOTION_FAMILIES:
            raise ValueError(f"unknown locomotion family {family!r}; choose one of {sorted(LOCOMOTION_FAMILIES)}")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive number of steps, got {horizon!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"rollout_workers must be a number of processes >= 0, got {workers!r}")
        if balanced_directions and LOCOMOTION_FAMILIES[family].goal != "sign":
            raise ValueError(f"balanced directions are for the forward/backward families, not {family}")
        require_mujoco(f"--tasks {family}")
        self.name, self.family, self.horizon, self.workers = family, LOCOMOTION_FAMILIES[family], horizon, workers
        self.balanced_directions = balanced_directions
        self.spaces = Spaces(observation_size=self.family.observation_size, action_kind="continuous",
                             action_size=self.family.action_size, action_scale=1.0)

    def _env(self, num_tasks: int, generator: torch.Generator) -> BatchedGymnasium:
        return self._simulator(self.family.draw(num_tasks, generator, self.dtype, self.balanced_directions))

    def _fixed_env(self, num_tasks: int, generator: torch.Generator) -> BatchedGymnasium:
        return self._simulator(self.family.draw(num_tasks, generator, self.dtype))

    def _simulator(self, goals: torch.Tensor) -> BatchedGymnasium:
        return BatchedGymnasium(goals, self.family.env_id, self.spaces, self.horizon, self.workers)
