"""What a batched simulator is: many MDPs x many trajectories stepped as one tensor operation.

A batched environment holds the parameters of ``num_tasks`` MDPs (goals, arm
probabilities, transition tables: each a tensor with a leading task
dimension) and steps a state of shape (tasks, trajectories, ...): every task's
trajectories at once, in a handful of tensor operations per step.

Its randomness is counter-based (see ``noise``): ``reset(seeds)`` takes one
seed per (task, trajectory) and every later draw is a function of that seed,
the episode number and the step, so each trajectory equals what the
gymnasium version of the same environment gives with ``reset(seed=...)``.

Observations come out as float features a policy reads directly (one-hot for
a discrete state); actions go in as float tensors (continuous) or int64
indices (discrete).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

ACTION_KINDS = ("continuous", "discrete")


@dataclass(frozen=True)
class Spaces:
    """What a policy needs to know about an environment."""

    observation_size: int
    action_kind: str  # "continuous" or "discrete"
    action_size: int  # dimensions (continuous) or number of actions (discrete)
    action_scale: float = 1.0  # continuous actions are clipped to [-scale, scale]

    def __post_init__(self) -> None:
        if self.action_kind not in ACTION_KINDS:
            raise ValueError(f"unknown action kind {self.action_kind!r}; choose one of {ACTION_KINDS}")


class BatchedEnv:
    """Base class. Subclasses are dataclasses whose tensor fields all have a leading task dimension.

    ``horizon`` is the most steps an episode lasts and ``episodes`` how many episodes make a trial
    (the same MDP throughout: what RL^2's recurrent policy remembers across).
    """

    spaces: Spaces
    horizon: int
    episodes: int = 1

    # --- to implement ---
    def _start_episode(self, trajectories: int) -> torch.Tensor:
        """Reset every (task, trajectory) to an initial state of the current episode; return observations."""
        raise NotImplementedError

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply actions of shape (tasks, trajectories, ...); return (observations, rewards, terminated)."""
        raise NotImplementedError

    # --- shared ---
    def reset(self, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """With ``seeds`` (tasks, trajectories): start a trial (episode 0). Without: the trial's next episode."""
        if seeds is None:
            if getattr(self, "_seeds", None) is None:
                raise ValueError("reset() without seeds continues a trial: call reset(seeds) first")
            self._episode += 1
        else:
            if seeds.dim() != 2 or seeds.shape[0] != self.num_tasks:
                raise ValueError(f"seeds must have shape (tasks={self.num_tasks}, trajectories), "
                                 f"got {tuple(seeds.shape)}")
            self._seeds, self._episode = seeds.to(self.device, torch.int64), 0
        self._step = 0
        return self._start_episode(self._seeds.shape[1])

    def _count_step(self) -> int:
        if getattr(self, "_seeds", None) is None:
            raise ValueError("step() before reset(seeds)")
        t, self._step = self._step, self._step + 1
        return t

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    @property
    def num_tasks(self) -> int:
        return next(iter(self._tensors().values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self._tensors().values())).device

    def select(self, index: slice | torch.Tensor) -> "BatchedEnv":
        """The same environment restricted to some tasks (a fresh one: call reset)."""
        return replace(self, **{name: value[index] for name, value in self._tensors().items()})

    def to(self, device: torch.device | str) -> "BatchedEnv":
        return replace(self, **{name: value.to(device) for name, value in self._tensors().items()})


def check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
