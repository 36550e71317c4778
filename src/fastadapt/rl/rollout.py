"""Batched rollouts: every task x trajectory of a meta-batch acts at once, one tensor operation a step.

``rollout`` runs a policy in a batched environment for one trial (``env.episodes`` episodes of up to
``env.horizon`` steps) per (task, trajectory) and returns padded tensors with a leading task dimension:
``Episodes`` of shape (tasks, trajectories, steps, ...). An episode that ends early (2D navigation
reaching its goal) leaves its remaining steps padded, with ``masks`` 0 there.

All randomness (environment and action sampling) is counter-based and derived from the seeds given, one
per (task, trajectory), so a trajectory is the same whatever else is in the batch, and wherever it is sampled:
gymnasium environments in rollout workers (MuJoCo) are sampled whole inside the workers
(``sample_in_workers``), every other batched environment in lock step here (``lockstep_rollout``). "The same"
is bitwise where the policy's matrix products have at least 4 rows (a task's trajectories with per-task
weights, a worker's share without): on fewer rows, the CPU's BLAS (measured on the 2-core AMD EPYC) takes
another path whose rounding depends on the batch's size and place in memory, so trajectories sampled in a
different split agree up to rounding only, until the dynamics amplify it. The same seeds, batch and number of
workers always give the same numbers.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from fastadapt.environments import BatchedEnv
from fastadapt.environments.noise import derive_seeds
from fastadapt.environments.parallel import BatchedGymnasium, rollout_workers

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


def rollout(env: BatchedEnv, policy: nn.Module, seeds: torch.Tensor, params: dict | None = None) -> Episodes:
    """One trial per (task, trajectory); ``seeds`` is (tasks, trajectories); ``params`` optional per-task weights."""
    if isinstance(env, BatchedGymnasium) and env.workers > 0:
        return sample_in_workers(env, policy, seeds, params)
    return lockstep_rollout(env, policy, seeds, params)


def sample_in_workers(env: BatchedGymnasium, policy: nn.Module, seeds: torch.Tensor,
                      params: dict | None = None) -> Episodes:
    """``rollout`` with each rollout worker sampling whole trajectories for a contiguous share of the tasks (ceil
    of tasks / workers each), with its own copy of the policy acting batched on its share.

    Stepping in lock step instead costs, every step, the policy's work in this process while the workers wait
    and two hand-overs between processes; on 2 cores that kept 2 workers at 1.52-1.58x one worker's steps a second
    (docs/benchmarks.md). The policy, per-task weights and trajectories travel once per rollout, through
    ``torch.save`` (CPU tensors: a policy on a GPU is copied to the workers' CPUs and the episodes come back to
    the environment's device)."""
    per_worker = math.ceil(env.num_tasks / env.workers)
    shares = [(start, min(start + per_worker, env.num_tasks)) for start in range(0, env.num_tasks, per_worker)]
    detached = None if params is None else {name: value.detach() for name, value in params.items()}
    payload = _to_bytes((policy, replace(env, workers=0), seeds, detached, shares))
    pool = rollout_workers(env.env_id, env.workers, 1)
    parts = [_from_bytes(part) for part in pool.run(_sample_share, payload) if part is not None]
    return Episodes(**{f.name: None if getattr(parts[0], f.name) is None
                       else torch.cat([getattr(part, f.name) for part in parts]).to(env.device)
                       for f in fields(Episodes) if f.name != "times"}, times=parts[0].times.to(env.device))


def _sample_share(index: int, payload: bytes) -> bytes | None:
    """In rollout worker ``index``: the lock-step rollout of its share of the tasks (None if it has none)."""
    policy, env, seeds, params, shares = _from_bytes(payload)
    if index >= len(shares):
        return None
    torch.set_num_threads(1)  # one core per worker
    share = slice(*shares[index])
    share_params = None if params is None else {name: value[share] for name, value in params.items()}
    return _to_bytes(lockstep_rollout(env.select(share), policy, seeds[share], share_params))


def _to_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


@torch.no_grad()
def lockstep_rollout(env: BatchedEnv, policy: nn.Module, seeds: torch.Tensor, params: dict | None = None) -> Episodes:
    """``rollout`` with the policy acting here on every environment at once, one batched step after another."""
    num_tasks, trajectories = seeds.shape
    horizon, length = env.horizon, env.episodes * env.horizon
    steps = torch.arange(length, device=seeds.device)
    action_noise = policy.actions.noise(derive_seeds(seeds, POLICY_STREAM), steps)
    env_seeds = derive_seeds(seeds, ENV_STREAM)

    columns: dict[str, list[torch.Tensor]] = {name: [] for name in
                                              ("observations", "actions", "rewards", "log_probs", "masks", "dones")}
    values: list[torch.Tensor] = []
    memory = None
    for episode in range(env.episodes):
        observations = env.reset(env_seeds if episode == 0 else None)
        if memory is None:
            memory = policy.initial_memory((num_tasks, trajectories), observations)
        alive = torch.ones(num_tasks, trajectories, dtype=torch.bool, device=observations.device)
        for t in range(horizon):
            dist, value, stepped = policy.act(observations, memory, params)
            actions = policy.actions.sample(dist, action_noise[:, :, episode * horizon + t])
            log_probs = policy.actions.log_prob(dist, actions)
            next_observations, rewards, terminated = env.step(actions)
            done = terminated | (t == horizon - 1)
            mask = alive.to(rewards.dtype)
            for name, value_t in (("observations", observations), ("actions", actions),
                                  ("rewards", rewards * mask), ("log_probs", log_probs * mask),
                                  ("masks", mask), ("dones", done.to(rewards.dtype) * mask)):
                columns[name].append(value_t)
            if value is not None:
                values.append(value * mask)
            memory = policy.remember(memory, stepped, actions, rewards, done, alive)
            alive = alive & ~terminated
            observations = next_observations
    stacked = {name: torch.stack(column, dim=2) for name, column in columns.items()}
    times = steps % horizon
    return Episodes(**stacked, times=times, values=torch.stack(values, dim=2) if values else None)


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
