"""Parallel rollouts: every task x trajectory of a meta-batch in its own gymnasium environment, held by worker
processes started through gymnasium's ``AsyncVectorEnv``.

Two ways to use the workers:

* whole trajectories (``RolloutWorkers.run``, what ``fastadapt.rl.rollout`` does): each worker receives a copy of
  the policy and samples every step of its share of the tasks itself, the policy acting batched in torch on
  that share; nothing crosses between processes until the trajectories come back. This is rllab's parallel
  sampler, and what makes 2 workers worth it on 2 cores (docs/benchmarks.md);
* lock step (``reset`` / ``step``, the ``BatchedEnv`` interface of ``BatchedGymnasium``): the policy acts on
  all environments in this process and the workers step them, one hand-over each way per step.

``AsyncVectorEnv`` runs one process per sub-environment, and a meta-batch holds hundreds of environments
(40 tasks x 20 trajectories), so each sub-environment is an ``EnvSlice``: a worker's share of the
environments, stepped one after the other inside that worker. With W workers, a batch of n environments
is cut into W contiguous slices of ceil(n / W).

A trajectory depends only on its seed and the actions taken: each environment is reset with its own
seed (``reset(seed=...)``, which also clears MuJoCo's solver warm start), so the same seeds and actions give the
same trajectories with any number of workers, in any slot, or in this process (``workers=0``); for what the
policy's rounding adds when it acts in the workers, see ``fastadapt.rl.rollout``.

Robustness, since a sampler that hangs loses a night of training:

* workers ignore SIGINT: Ctrl-C is the main process's, which finishes the step and saves (see the trainer);
* any exception during a reset, step or run (a second Ctrl-C included) shuts the workers down, so the next
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
import os
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
        observation_size = single.observation_space.shape[0]
        low, high = single.action_space.low, single.action_space.high
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
        end = start + options["per_slice"]
        tasks, seeds = options["tasks"][start:end], options["seeds"][start:end]
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

    def run(self, function, *args):
        """``function(index, *args)`` in the worker that holds this slice: how whole trajectories are sampled
        where the environments live."""
        return function(self.index, *args)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker_slice(env_id: str, size: int, index: int) -> EnvSlice:
    """A worker's slice (unpickling this function in a fresh worker imports fastadapt.environments, which
    registers the ids). In a worker, Ctrl-C is ignored: it belongs to the main process, which stops after the
    current step; gymnasium also calls this once in the main process, for the spaces.

    On Linux, worker i is pinned to the i-th of the cores this process may use (round robin): the workers
    sleep while the policy acts and wake together for every step, and a worker woken on a core that another
    one or the main process is using waits to be moved; pinned, 2 workers stepped 4-9% more steps a second
    on the 2-core machine (docs/benchmarks.md)."""
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if hasattr(os, "sched_setaffinity"):  # Linux
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    return EnvSlice(env_id, size, index)


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        return f"was killed by signal {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


class RolloutWorkers:
    """``workers`` processes (0: this process), each holding ``slots`` environments of ``env_id``.

    ``reset(tasks, seeds)`` starts a batch of n <= workers * slots environments; ``step(actions)`` steps them.
    """

    def __init__(self, env_id: str, workers: int, slots: int) -> None:
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"rollout_workers must be a number of processes >= 0, got {workers!r}")
        self.env_id, self.workers, self.slots = env_id, workers, check_positive("slots", slots)
        self.closed, self.count = False, 0
        self.batch_slots = np.zeros(0, dtype=np.int64)  # where the current batch's environments sit (set by reset)
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
    def pids(self) -> list[int]:
        return [] if self.vector is None else [process.pid for process in self.vector.processes]

    @property
    def capacity(self) -> int:
        return max(self.workers, 1) * self.slots

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
        if self.vector is None:
            return []
        deadline = time.monotonic() + patience
        while True:
            dead = [(index, process.pid, process.exitcode) for index, process in enumerate(self.vector.processes)
                    if not process.is_alive()]
            if dead or time.monotonic() > deadline:
                return dead
            time.sleep(0.02)

    def _per_slice(self, count: int) -> int:
        if count > self.capacity:
            raise ValueError(f"{count} environments do not fit {self.workers} workers x {self.slots} slots")
        return math.ceil(count / max(self.workers, 1))

    def reset(self, tasks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """Start environment i with task ``tasks[i]`` and seed ``seeds[i]``; their observations (n, obs)."""
        self.count = len(seeds)
        per_slice = self._per_slice(self.count)
        self.batch_slots = self._slot_index(per_slice)
        options = {"tasks": np.asarray(tasks, dtype=np.float64), "seeds": np.asarray(seeds, dtype=np.int64),
                   "per_slice": per_slice}
        if self.vector is None:
            return self.local.reset(options=options)[0][: self.count]
        observations, _ = self._guarded("a reset", lambda: self.vector.reset(options=options))
        return self._gather(observations)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions (n, action); returns observations (n, obs), rewards (n,) and terminated (n,)."""
        if self.vector is None:
            padded = np.zeros((self.slots, actions.shape[-1]), dtype=actions.dtype)
            padded[: self.count] = actions
            observations, rewards, terminated, _, _ = self.local.step(padded)
            return observations[: self.count].copy(), rewards[: self.count], terminated[: self.count]
        padded = np.zeros((self.workers * self.slots, actions.shape[-1]), dtype=actions.dtype)
        padded[self.batch_slots] = actions
        observations, rewards, terminated, _, _ = self._guarded(
            "a step", lambda: self.vector.step(padded.reshape(self.workers, self.slots, -1)))
        return (self._gather(observations), rewards.reshape(-1)[self.batch_slots],
                np.asarray(terminated).reshape(-1)[self.batch_slots])

    def run(self, function, *args) -> list:
        """``function(worker index, *args)`` in every worker at once (a module-level function: it is pickled by
        name); the results in worker order."""
        if self.vector is None:
            return [function(0, *args)]
        return list(self._guarded("a rollout", lambda: self.vector.call("run", function, *args)))

    def _slot_index(self, per_slice: int) -> np.ndarray:
        """Where environment i of the batch sits in the flattened (workers x slots) layout."""
        i = np.arange(self.count)
        return (i // per_slice) * self.slots + i % per_slice

    def _gather(self, observations: np.ndarray) -> np.ndarray:
        flat = np.asarray(observations).reshape(self.workers * self.slots, -1)
        return flat[self.batch_slots]

    def close(self, terminate: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.vector is None:
            self.local.close()
            return
        with warnings.catch_warnings():  # gymnasium warns when closing mid-step, which is the point here
            warnings.simplefilter("ignore")
            try:
                self.vector.close(terminate=terminate)
                return
            except Exception:  # gymnasium first reads the pending answers: a dead worker's pipe fails that
                pass
        for process in self.vector.processes:  # make sure none is left
            if process.is_alive():
                process.terminate()
            process.join()
        for pipe in self.vector.parent_pipes:
            pipe.close()
        self.vector.closed = True  # its __del__ would otherwise try to close it again, and fail the same way


_POOLS: dict[tuple, RolloutWorkers] = {}


def rollout_workers(env_id: str, workers: int, environments: int) -> RolloutWorkers:
    """The process's pool for ``env_id`` and ``workers``, started (or restarted larger, or after a failure)
    so that it holds at least ``environments`` environments."""
    key = (env_id, workers)
    pool = _POOLS.get(key)
    if pool is None or pool.closed or pool.capacity < environments:
        if pool is not None:
            pool.close()
        pool = _POOLS[key] = RolloutWorkers(env_id, workers, math.ceil(environments / max(workers, 1)))
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

    def _start_episode(self, trajectories: int) -> torch.Tensor:
        seeds = self._seeds.cpu().numpy().reshape(-1)
        tasks = self.tasks.double().cpu().numpy().repeat(trajectories, axis=0)
        self._pool = rollout_workers(self.env_id, self.workers, len(seeds))
        self._shape = (self.num_tasks, trajectories)
        return self._tensor(self._pool.reset(tasks, seeds))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.tasks.device, self.tasks.dtype)
        return tensor.reshape(*self._shape, *array.shape[1:])

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._count_step()
        expected = (*self._shape, self.spaces.action_size)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected}, got {tuple(actions.shape)}")
        observations, rewards, terminated = self._pool.step(actions.detach().cpu().numpy().reshape(-1, expected[-1]))
        done = torch.from_numpy(np.asarray(terminated, dtype=bool)).reshape(self._shape)
        return self._tensor(observations), self._tensor(rewards), done.to(self.tasks.device)
