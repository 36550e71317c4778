"""Batched rollouts: every task x trajectory of a meta-batch acts at once, one tensor operation a step.

``rollout`` runs a policy in a batched environment for one trial (``env.episodes`` episodes of up to
``env.horizon`` steps) per (task, trajectory) and returns padded tensors with a leading task dimension:
``Episodes`` of shape (tasks, trajectories, steps, ...). An episode that ends early (2D navigation
reaching its goal) leaves its remaining steps padded, with ``masks`` 0 there.

All randomness (environment and action sampling) is counter-based and derived from the seeds given, one
per (task, trajectory), so a trajectory is the same whatever else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from fastadapt.environments import BatchedEnv
from fastadapt.environments.noise import derive_seeds

ENV_STREAM, POLICY_STREAM = 0, 1


@dataclass
class Episodes:
    """Padded trajectories, each tensor (tasks, trajectories, steps, ...)."""

    observations: torch.Tensor  # (T, N, L, obs)
    actions: torch.Tensor  # (T, N, L, action dims) float, or (T, N, L) int64
    rewards: torch.Tensor  # (T, N, L), 0 on padded steps
    log_probs: torch.Tensor  # (T, N, L) under the policy that acted
    masks: torch.Tensor  # (T, N, L) 1.0 where a step happened
    dones: torch.Tensor  # (T, N, L) 1.0 where an episode ended after this step (termination or horizon)
    times: torch.Tensor  # (L,) step index within its episode
    values: torch.Tensor | None = None  # (T, N, L) value estimates of a policy that makes them (RL^2)

    @property
    def returns(self) -> torch.Tensor:
        """Total reward of every trajectory (trial): (tasks, trajectories)."""
        return self.rewards.sum(-1)

    def select(self, index) -> "Episodes":
        """Some tasks (index over the first dimension) or (tasks, trajectories) pairs (a tuple index)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if f.name != "times" and getattr(self, f.name) is not None})


COLUMNS = ("observations", "actions", "rewards", "log_probs", "masks", "dones")


class _TaskGroup:
    """The tasks an environment steps together (all of them, or one of its pipelined groups), and what happened
    in them so far: the policy acts on the group's current observations, then ``record`` adds the step's outcome."""

    def __init__(self, part: slice, policy: nn.Module, params: dict | None, noise: torch.Tensor) -> None:
        self.part, self.policy, self.noise = part, policy, noise[part]
        self.params = None if params is None else {name: value[part] for name, value in params.items()}
        self.columns: dict[str, list[torch.Tensor]] = {name: [] for name in COLUMNS}
        self.values: list[torch.Tensor] = []
        self.memory = None

    def start_episode(self, observations: torch.Tensor) -> None:
        self.observations = observations
        if self.memory is None:
            self.memory = self.policy.initial_memory(observations.shape[:2], observations)
        self.alive = torch.ones(observations.shape[:2], dtype=torch.bool, device=observations.device)

    def act(self, step: int) -> torch.Tensor:
        dist, self.value, self.stepped = self.policy.act(self.observations, self.memory, self.params)
        self.actions = self.policy.actions.sample(dist, self.noise[:, :, step])
        self.log_probs = self.policy.actions.log_prob(dist, self.actions)
        return self.actions

    def record(self, next_observations: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
               last: bool) -> None:
        done = terminated | last
        mask = self.alive.to(rewards.dtype)
        for name, value_t in (("observations", self.observations), ("actions", self.actions),
                              ("rewards", rewards * mask), ("log_probs", self.log_probs * mask),
                              ("masks", mask), ("dones", done.to(rewards.dtype) * mask)):
            self.columns[name].append(value_t)
        if self.value is not None:
            self.values.append(self.value * mask)
        self.memory = self.policy.remember(self.memory, self.stepped, self.actions, rewards, done, self.alive)
        self.alive = self.alive & ~terminated
        self.observations = next_observations


@torch.no_grad()
def rollout(env: BatchedEnv, policy: nn.Module, seeds: torch.Tensor, params: dict | None = None) -> Episodes:
    """One trial per (task, trajectory); ``seeds`` is (tasks, trajectories); ``params`` optional per-task weights.

    Where the environment steps groups of tasks separately (``env.task_groups()``: MuJoCo in rollout workers),
    the policy acts in each group as soon as its last step is back, while the other group is still being
    stepped. The policy always acts on the same groups, so the trajectories do not depend on where the
    environments run."""
    num_tasks, trajectories = seeds.shape
    horizon, length = env.horizon, env.episodes * env.horizon
    steps = torch.arange(length, device=seeds.device)
    action_noise = policy.actions.noise(derive_seeds(seeds, POLICY_STREAM), steps)
    env_seeds = derive_seeds(seeds, ENV_STREAM)
    groups = [_TaskGroup(part, policy, params, action_noise) for part in env.task_groups()]
    for episode in range(env.episodes):
        observations = env.reset(env_seeds if episode == 0 else None)
        for group in groups:
            group.start_episode(observations[group.part])
        for t in range(horizon):
            for index, group in enumerate(groups):
                if t > 0:
                    group.record(*env.receive(index), last=False)
                env.send(index, group.act(episode * horizon + t))
        for index, group in enumerate(groups):
            group.record(*env.receive(index), last=True)
    stacked = {name: torch.cat([torch.stack(group.columns[name], dim=2) for group in groups])
               for name in COLUMNS}
    values = torch.cat([torch.stack(group.values, dim=2) for group in groups]) if groups[0].values else None
    return Episodes(**stacked, times=steps % horizon, values=values)


def replay(policy: nn.Module, episodes: Episodes) -> tuple[object, torch.Tensor]:
    """A recurrent policy's distributions and values along recorded trials, with gradients: the same steps
    ``rollout`` took (hidden state carried across episodes, frozen on padded steps). Trials without padding
    (no episode ended early: bandits, tabular MDPs) go through the GRU in one call, else step by step."""
    if bool(episodes.masks.all()):
        return policy.sequence(episodes.observations, episodes.actions, episodes.rewards, episodes.dones)
    observations = episodes.observations
    memory = policy.initial_memory(observations.shape[:2], observations)
    dists, values = [], []
    for t in range(observations.shape[2]):
        dist, value, stepped = policy.act(observations[:, :, t], memory)
        dists.append(dist)
        values.append(value)
        memory = policy.remember(memory, stepped, episodes.actions[:, :, t], episodes.rewards[:, :, t],
                                 episodes.dones[:, :, t].bool(), episodes.masks[:, :, t].bool())
    if isinstance(dists[0], tuple):
        dist = tuple(torch.stack(parts, dim=2) for parts in zip(*dists))
    else:
        dist = torch.stack(dists, dim=2)
    return dist, torch.stack(values, dim=2)
