"""Parallel rollouts: every task x trajectory of a meta-batch in its own gymnasium environment, stepped in
worker processes through gymnasium's ``AsyncVectorEnv``, while the policy acts on all of them at once in torch.

``AsyncVectorEnv`` runs one process per sub-environment, and a meta-batch holds hundreds of environments
(40 tasks x 20 trajectories), so each sub-environment is an ``EnvSlice``: a worker's share of the
environments, stepped one after the other inside that worker.

The rollout is pipelined: the tasks form two groups (halves), and with W >= 2 workers each group has its
own ``AsyncVectorEnv`` (a lane) of about W / 2 workers, so the policy computes one group's actions while
the other group's workers step; a lane of w workers cuts its n environments into w contiguous slices of
ceil(n / w). With one worker (or none) a single lane steps both groups once both have acted.

A trajectory depends only on its seed and the actions taken: each environment is reset with its own
seed (``reset(seed=...)``, which also clears MuJoCo's solver warm start), so the same seeds give the same
trajectories with any number of workers, in any slot, or in this process (``workers=0``).

Robustness, since a sampler that hangs loses a night of training:

* workers ignore SIGINT: Ctrl-C is the main process's, which finishes the step and saves (see the trainer);
* any exception during a reset or step (a second Ctrl-C included) shuts the workers down, so the next
  rollout starts fresh ones instead of talking to a pool left mid-step: reuse never deadlocks;
* a worker that dies (killed, out of memory) breaks its pipe; that is reported as ``RolloutWorkerError``,
  naming the worker and its signal, instead of a hang or an ``EOFError``.

The pools live for the process (one per environment family and worker count, shared by training,
validation and evaluation) and are closed at exit.
"""
from __future__ import annotations

import atexit
import math
import multiprocessing
import signal
import time
import warnings
from dataclasses import dataclass
from functools import partial

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from fastadapt.environments.base import BatchedEnv, Spaces, check_positive


#: groups of environments a rollout pipelines: the policy acts in one while the workers step the other
PIPELINE_GROUPS = 2


class RolloutWorkerError(RuntimeError):
    """A rollout worker process died; the rollout in progress is lost."""


class EnvSlice(gymnasium.Env):
    """``size`` copies of one registered environment, stepped in turn: what one rollout worker runs.

    ``reset(options={"tasks": ..., "seeds": ..., "per_slice": k})`` starts the environments
    [index * k, (index + 1) * k) of a batch (fewer in the last slice): environment i of the batch gets
    task ``tasks[i]`` (through the environment's ``task_option``) and seed ``seeds[i]``. Unused slots and
    environments whose episode terminated are not stepped: they return zero reward and their last
    observation. Rewards and terminations come back as arrays, one entry per slot.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_id: str, size: int, index: int = 0) -> None:
        self.env_id, self.index, self.size = env_id, index, check_positive("size", size)
        self.envs = [self._make()]  # the others at the first reset: gymnasium builds one slice just for its spaces
        single = self.envs[0]
        self.task_option = single.task_option
        observation_size, low, high = single.observation_space.shape[0], single.action_space.low, single.action_space.high
        self.observation_space = spaces.Box(-np.inf, np.inf, (size, observation_size), np.float64)
        self.action_space = spaces.Box(np.tile(low, (size, 1)), np.tile(high, (size, 1)), dtype=np.float32)
        self.active = 0
        self.observations = np.zeros(self.observation_space.shape)
        self.terminated = np.zeros(size, dtype=bool)

    def _make(self) -> gymnasium.Env:
        return gymnasium.make(self.env_id, disable_env_checker=True).unwrapped

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if not options or not {"tasks", "seeds", "per_slice"} <= set(options):
            raise ValueError("EnvSlice.reset needs options with 'tasks', 'seeds' and 'per_slice'")
        start = self.index * options["per_slice"]
        tasks, seeds = options["tasks"][start : start + options["per_slice"]], options["seeds"][start : start + options["per_slice"]]
        if len(seeds) > self.size:
            raise ValueError(f"a slice of {len(seeds)} environments does not fit {self.size} slots")
        self.envs += [self._make() for _ in range(len(seeds) - len(self.envs))]
        self.active = len(seeds)
        self.observations[:] = 0.0
        self.terminated[:] = False
        for slot, (task, env_seed) in enumerate(zip(tasks, seeds)):
            task = task[0] if np.size(task) == 1 else task
            self.observations[slot], _ = self.envs[slot].reset(seed=int(env_seed), options={self.task_option: task})
        return self.observations.copy(), {}

    def step(self, actions):
        rewards = np.zeros(self.size)
        for slot in range(self.active):
            if not self.terminated[slot]:
                observation, rewards[slot], terminated, _, _ = self.envs[slot].step(actions[slot])
                self.observations[slot] = observation
                self.terminated[slot] = terminated
        return self.observations.copy(), rewards, self.terminated.copy(), np.zeros(self.size, dtype=bool), {}

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker_slice(env_id: str, size: int, index: int) -> EnvSlice:
    """A worker's slice (unpickling this function in a fresh worker imports fastadapt.environments, which
    registers the ids). In a worker, Ctrl-C is ignored: it belongs to the main process, which stops after the
    current step; gymnasium also calls this once in the main process, for the spaces."""
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return EnvSlice(env_id, size, index)


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        return f"was killed by signal {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


class _Lane:
    """Environments stepped together: one ``AsyncVectorEnv`` of ``workers`` processes, each holding ``slots``
    environments (or, with 0 workers, one ``EnvSlice`` in this process)."""

    def __init__(self, env_id: str, workers: int, slots: int) -> None:
        self.workers, self.slots, self.count = workers, slots, 0
        self.vector: AsyncVectorEnv | None = None
        if workers == 0:
            self.local = EnvSlice(env_id, slots, 0)
            return
        makers = [partial(_worker_slice, env_id, slots, index) for index in range(workers)]
        try:
            self.vector = AsyncVectorEnv(makers, context="spawn", autoreset_mode=AutoresetMode.DISABLED, copy=False)
        except (EOFError, OSError) as error:
            raise RolloutWorkerError(
                f"could not start {workers} rollout worker processes ({type(error).__name__}: {error}). Workers are "
                "started with 'spawn', which re-imports the main script: a script must guard its entry point with "
                "if __name__ == '__main__' (or use rollout_workers 0 to step environments in this process)") from None

    @property
    def processes(self) -> list:
        return [] if self.vector is None else list(self.vector.processes)

    @property
    def capacity(self) -> int:
        return max(self.workers, 1) * self.slots

    def _per_slice(self) -> int:
        return math.ceil(self.count / max(self.workers, 1))

    def reset(self, tasks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        self.count = len(seeds)
        options = {"tasks": tasks, "seeds": seeds, "per_slice": self._per_slice()}
        if self.vector is None:
            return self.local.reset(options=options)[0][: self.count]
        observations, _ = self.vector.reset(options=options)
        return self._gather(observations)

    def step_async(self, actions: np.ndarray) -> None:
        if self.vector is None:
            padded = np.zeros((self.slots, actions.shape[-1]))
            padded[: self.count] = actions
            self.result = self.local.step(padded)
            return
        padded = np.zeros((self.workers * self.slots, actions.shape[-1]))
        padded[self._slot_index()] = actions
        self.vector.step_async(padded.reshape(self.workers, self.slots, -1))

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.vector is None:
            observations, rewards, terminated, _, _ = self.result
            return observations[: self.count].copy(), rewards[: self.count], terminated[: self.count]
        observations, rewards, terminated, _, _ = self.vector.step_wait()
        index = self._slot_index()
        return self._gather(observations), rewards.reshape(-1)[index], np.asarray(terminated).reshape(-1)[index]

    def _slot_index(self) -> np.ndarray:
        """Where environment i of the lane sits in the flattened (workers x slots) layout."""
        i, per_slice = np.arange(self.count), self._per_slice()
        return (i // per_slice) * self.slots + i % per_slice

    def _gather(self, observations: np.ndarray) -> np.ndarray:
        return np.asarray(observations).reshape(self.workers * self.slots, -1)[self._slot_index()]

    def close(self, terminate: bool) -> None:
        if self.vector is None:
            self.local.close()
            return
        with warnings.catch_warnings():  # gymnasium warns when closing mid-step, which is the point here
            warnings.simplefilter("ignore")
            try:
                self.vector.close(terminate=terminate)
            except Exception:  # a worker already gone: make sure none is left
                self.vector.close(terminate=True)


class RolloutWorkers:
    """``workers`` processes (0: this process) holding ``environments`` environments of ``env_id`` between them.

    ``reset(tasks, seeds, groups)`` starts a batch of environments, cut into consecutive groups of the given sizes;
    ``step_async(group, actions)`` and ``step_wait(group)`` step one group. With two or more workers the groups
    are pipelined: each runs on its own share of the workers (its lane), so the policy can act in one group while
    the other is being stepped. With fewer workers than that there is one lane, which steps once every group's
    actions are in.
    """

    def __init__(self, env_id: str, workers: int, groups: list[int]) -> None:
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"rollout_workers must be a number of processes >= 0, got {workers!r}")
        self.env_id, self.workers, self.closed = env_id, workers, False
        shares = [workers] if workers < PIPELINE_GROUPS else [workers // PIPELINE_GROUPS + (g < workers % PIPELINE_GROUPS)
                                                              for g in range(PIPELINE_GROUPS)]
        # one lane holds every group; pipelined lanes hold one group each
        per_lane = check_positive("environments", sum(groups) if len(shares) == 1 else max(groups))
        self.lanes: list[_Lane] = []
        try:
            for share in shares:
                self.lanes.append(_Lane(env_id, share, math.ceil(per_lane / max(share, 1))))
        except BaseException:
            self.close(terminate=True)
            raise
        self.sizes: list[int] = []
        self.waiting: dict[int, np.ndarray] = {}

    def fits(self, groups: list[int]) -> bool:
        if len(self.lanes) == 1:
            return sum(groups) <= self.lanes[0].capacity
        return len(groups) <= len(self.lanes) and max(groups) <= min(lane.capacity for lane in self.lanes)

    @property
    def processes(self) -> list:
        return [process for lane in self.lanes for process in lane.processes]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def _guarded(self, what: str, call):
        """Run a call to the workers; on any failure shut them down, and name a worker that died."""
        if self.closed:
            raise RuntimeError("these rollout workers were shut down; get new ones from rollout_workers()")
        try:
            return call()
        except BaseException as error:
            # a broken pipe is how a worker's death shows: give a dying process a moment to be reaped
            dead = self._dead_workers(patience=1.0 if isinstance(error, (EOFError, OSError)) else 0.0)
            self.close(terminate=True)
            if dead:
                index, pid, exitcode = dead[0]
                raise RolloutWorkerError(
                    f"rollout worker {index} (pid {pid}) {_death(exitcode)} during {what}; the rollout was abandoned "
                    f"and the other workers shut down (new ones start with the next rollout). Continue the run from "
                    f"its last checkpoint with --resume"
                ) from None
            raise error

    def _dead_workers(self, patience: float) -> list[tuple[int, int, int | None]]:
        """(index, pid, exit code) of the workers that have exited, waiting up to ``patience`` s for a dying one."""
        deadline = time.monotonic() + patience
        while True:
            dead = [(index, process.pid, process.exitcode) for index, process in enumerate(self.processes)
                    if not process.is_alive()]
            if dead or time.monotonic() > deadline:
                return dead
            time.sleep(0.02)

    def reset(self, tasks: np.ndarray, seeds: np.ndarray, groups: list[int] | None = None) -> np.ndarray:
        """Start environment i with task ``tasks[i]`` and seed ``seeds[i]``; their observations (n, obs).
        ``groups``: the sizes of the consecutive groups ``step_async`` will step (default: one group)."""
        count = len(seeds)
        self.sizes = list(groups) if groups else [count]
        if sum(self.sizes) != count or len(self.sizes) > PIPELINE_GROUPS or not self.fits(self.sizes):
            raise ValueError(f"{count} environments in groups of {self.sizes} do not fit these workers")
        tasks, seeds = np.asarray(tasks, dtype=np.float64), np.asarray(seeds, dtype=np.int64)
        self.waiting = {}
        bounds = np.cumsum([0, *self.sizes]) if len(self.lanes) > 1 else np.array([0, count])
        return self._guarded("a reset", lambda: np.concatenate([
            lane.reset(tasks[start:stop], seeds[start:stop])
            for lane, start, stop in zip(self.lanes, bounds[:-1], bounds[1:]) if stop > start]))

    def step_async(self, group: int, actions: np.ndarray) -> None:
        """Send one group's actions (group_size, action)."""
        if len(self.lanes) > 1:
            self._guarded("a step", lambda: self.lanes[group].step_async(actions))
            return
        self.waiting[group] = actions
        if len(self.waiting) == len(self.sizes):  # one lane: step when every group has acted
            everything = np.concatenate([self.waiting[g] for g in range(len(self.sizes))])
            self._guarded("a step", lambda: self.lanes[0].step_async(everything))
            self.results = self._guarded("a step", self.lanes[0].step_wait)
            self.waiting = {}

    def step_wait(self, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One group's observations (group_size, obs), rewards and terminated (group_size,) after its actions."""
        if len(self.lanes) > 1:
            return self._guarded("a step", self.lanes[group].step_wait)
        start = sum(self.sizes[:group])
        return tuple(result[start : start + self.sizes[group]] for result in self.results)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step every group: actions (n, action); observations (n, obs), rewards (n,) and terminated (n,)."""
        bounds = np.cumsum([0, *self.sizes])
        for group, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            self.step_async(group, actions[start:stop])
        results = [self.step_wait(group) for group in range(len(self.sizes))]
        return tuple(np.concatenate(parts) for parts in zip(*results))

    def close(self, terminate: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for lane in self.lanes:
            lane.close(terminate)


_POOLS: dict[tuple, RolloutWorkers] = {}


def rollout_workers(env_id: str, workers: int, groups: list[int]) -> RolloutWorkers:
    """The process's pool for ``env_id`` and ``workers``, started (or restarted larger, or after a failure)
    so that it holds groups of environments of the sizes ``groups``."""
    key = (env_id, workers)
    pool = _POOLS.get(key)
    if pool is None or pool.closed or not pool.fits(groups):
        if pool is not None:
            pool.close()
        pool = _POOLS[key] = RolloutWorkers(env_id, workers, groups)
    return pool


@atexit.register
def close_rollout_workers() -> None:
    """Shut every pool down (at exit, and for tests)."""
    for pool in list(_POOLS.values()):
        pool.close()
    _POOLS.clear()


@dataclass
class BatchedGymnasium(BatchedEnv):
    """A ``BatchedEnv`` whose (task, trajectory) environments are gymnasium environments in rollout workers.

    ``tasks`` (num_tasks, task size) holds each task's parameters (a direction, a goal velocity), handed to
    the environment's ``reset`` option; observations and rewards come back in ``tasks``' dtype.
    """

    tasks: torch.Tensor
    env_id: str
    spaces: Spaces
    horizon: int = 200
    workers: int = 2

    def __post_init__(self) -> None:
        check_positive("horizon", self.horizon)
        if self.tasks.dim() != 2:
            raise ValueError(f"tasks must have shape (tasks, task size), got {tuple(self.tasks.shape)}")

    def task_groups(self) -> list[slice]:
        """Two halves of the tasks, pipelined by the rollout workers (one group for a single task)."""
        half = math.ceil(self.num_tasks / PIPELINE_GROUPS)
        return [slice(0, half), slice(half, self.num_tasks)] if self.num_tasks >= PIPELINE_GROUPS else [slice(None)]

    def _start_episode(self, trajectories: int) -> torch.Tensor:
        seeds = self._seeds.cpu().numpy().reshape(-1)
        tasks = self.tasks.double().cpu().numpy().repeat(trajectories, axis=0)
        self._group_tasks = [len(range(self.num_tasks)[part]) for part in self.task_groups()]
        sizes = [count * trajectories for count in self._group_tasks]
        self._pool = rollout_workers(self.env_id, self.workers, sizes)
        self._trajectories = trajectories
        return self._tensor(self._pool.reset(tasks, seeds, sizes), self.num_tasks)

    def _tensor(self, array: np.ndarray, tasks: int) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.tasks.device, self.tasks.dtype)
        return tensor.reshape(tasks, self._trajectories, *array.shape[1:])

    def send(self, group: int, actions: torch.Tensor) -> None:
        if group == 0:
            self._count_step()
        expected = (self._group_tasks[group], self._trajectories, self.spaces.action_size)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected}, got {tuple(actions.shape)}")
        self._pool.step_async(group, actions.detach().double().cpu().numpy().reshape(-1, expected[-1]))

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        expected = (self.num_tasks, self._trajectories, self.spaces.action_size)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected}, got {tuple(actions.shape)}")
        parts = self.task_groups()
        for group, part in enumerate(parts):
            self.send(group, actions[part])
        results = [self.receive(group) for group in range(len(parts))]
        return tuple(torch.cat(result) for result in zip(*results))

    def receive(self, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        observations, rewards, terminated = self._pool.step_wait(group)
        tasks = self._group_tasks[group]
        done = torch.from_numpy(np.asarray(terminated, dtype=bool)).reshape(tasks, self._trajectories)
        return self._tensor(observations, tasks), self._tensor(rewards, tasks), done.to(self.tasks.device)
