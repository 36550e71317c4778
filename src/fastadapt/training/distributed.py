"""Data-parallel meta-training with torch.distributed: the meta-batch is split across processes.

Every process draws the *whole* meta-batch of B tasks from the same seeded
stream and keeps its own slice of B/N tasks, so the processes see different
tasks and their union is exactly the batch a single process would draw. Each
process's meta-loss is the mean over its slice, so averaging the
meta-gradients over the processes (one flattened all-reduce per step) gives
the gradient of the mean over all B tasks: N processes with B/N tasks each
follow the one-process run with B tasks up to float rounding. Parameters start
equal (broadcast from rank 0), every process takes the same optimizer step,
rank 0 alone writes the run directory, and all processes resume from the same
``last.pt``, which holds every rank's random number generator state.

Two ways to start it (gloo on CPU, NCCL on CUDA with one GPU per local rank):

* ``fastadapt train ... --nproc N`` or ``runs.directory.train(cfg, nproc=N)``: N local processes, spawned here;
* ``torchrun --nproc-per-node N -m fastadapt train ...``: any torchrun setup, several machines included;
  each process reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from its environment.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastadapt.algorithms.base import MetaLearner
from fastadapt.config.schema import Config
from fastadapt.tasks.base import Batch, TaskDistribution
from fastadapt.training.checkpoint import load_checkpoint, restore_rng_state
from fastadapt.training.device import resolve_device
from fastadapt.training.trainer import StopRequest, Trainer, TrainingInterrupted, TrainResult


class WorkerError(RuntimeError):
    """A spawned training process failed; the message holds its traceback."""


@dataclass(frozen=True)
class ProcessGroup:
    rank: int
    world_size: int
    device: torch.device


def launched_world_size() -> int | None:
    """WORLD_SIZE when a launcher (torchrun, or ``spawn`` below) started this process, else None."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


def is_main_process() -> bool:
    """Rank 0, or a process outside any distributed launch: the one that reports and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def check_split(meta_batch_size: int, world_size: int) -> int:
    """Tasks per process; the meta-batch must split evenly so every process's mean weighs the same."""
    if world_size < 1:
        raise ValueError(f"the number of processes must be at least 1, got {world_size}")
    if meta_batch_size % world_size:
        raise ValueError(f"meta_batch_size {meta_batch_size} does not split evenly over {world_size} processes; "
                         f"choose a multiple of {world_size}")
    return meta_batch_size // world_size


def _device_for(device_name: str, local_rank: int, world_size: int) -> tuple[torch.device, str]:
    """This process's device and the matching backend: one GPU per local rank with NCCL, else gloo on CPU."""
    device = resolve_device(device_name)
    if device.type == "cpu":
        return device, "gloo"
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if local_rank >= available:
            raise ValueError(f"{world_size} processes on this machine need {local_rank + 1} GPUs, "
                             f"but only {available} are visible")
        return torch.device("cuda", local_rank), "nccl"
    raise ValueError(f"distributed training supports cpu and cuda devices, not {device.type!r}")


@contextmanager
def process_group(device_name: str, nproc: int | None = None) -> Iterator[ProcessGroup | None]:
    """Join the launcher's process group for the duration of a run; yields None in a single process."""
    world_size = launched_world_size()
    if nproc is not None and world_size is not None and nproc != world_size:
        raise ValueError(f"--nproc {nproc} disagrees with the launcher's WORLD_SIZE={world_size}; "
                         "under torchrun leave --nproc out")
    if world_size is None or world_size == 1:
        yield None
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device, backend = _device_for(device_name, local_rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        yield ProcessGroup(rank, world_size, device)
        dist.barrier()  # no process tears down its connections while another still exchanges on them
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, fn: Callable, nproc: int, port: int, args: tuple, kwargs: dict) -> None:
    faulthandler.enable()  # a worker killed by a signal (an abort in gloo, say) prints where each thread was
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn(*args, **kwargs)
    except TrainingInterrupted:  # last.pt is saved; exit cleanly so the other workers are not killed
        pass


def spawn(fn: Callable, nproc: int, cfg: Config, **kwargs: Any) -> None:
    """Run ``fn(cfg, **kwargs)`` in ``nproc`` fresh local processes that form one process group.

    ``fn`` must be importable (a module-level function) and start its process group with
    ``process_group``; ``cfg.training.threads`` should share out the cores. A SIGINT or SIGTERM to this
    process is passed on to the workers, which stop together and save ``last.pt``; then this raises
    ``TrainingInterrupted``. If a worker fails, ``WorkerError``.
    """
    context = mp.start_processes(_worker, args=(fn, nproc, _free_port(), (cfg,), kwargs), nprocs=nproc,
                                 start_method="spawn", join=False)
    signalled: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        signalled.append(signum)
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, forward) for signum in StopRequest.SIGNALS}
    try:
        while not context.join():
            pass
    except mp.ProcessException as error:
        raise WorkerError(f"a training process failed:\n{error}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    last = Path(cfg.training.output_dir) / "last.pt"
    saved = load_checkpoint(last)["iteration"] if last.exists() else None
    if signalled and (saved is None or saved < cfg.training.iterations):
        raise TrainingInterrupted(last.parent, saved, saved)


def _flat_collective(tensors: Iterable[torch.Tensor], collective: Callable[[torch.Tensor], Any]) -> None:
    """Apply ``collective`` in place to many tensors with one call per dtype, on one flat buffer."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        for tensor, synced in zip(group, flat.split([t.numel() for t in group])):
            tensor.copy_(synced.view_as(tensor))


def mean_over_processes(world_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function giving a tensor's mean over the processes (every process gets the same bits back)."""
    def mean(tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / world_size

    return mean


def average_gradients(learner: MetaLearner, world_size: int) -> None:
    """Replace every gradient by its mean over the processes (sum, then divide: gloo has no AVG)."""
    def mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(world_size)

    _flat_collective((p.grad for p in learner.parameters() if p.grad is not None), mean)


class DistributedTrainer(Trainer):
    """A ``Trainer`` for one process of a group: its slice of each meta-batch, averaged gradients.

    Every process must call the same methods in the same order (they hold
    collectives): ``resume``, then ``fit``.
    """

    def __init__(
        self,
        group: ProcessGroup,
        cfg: Config,
        learner: MetaLearner,
        tasks: TaskDistribution,
        val_batches: Callable[[], Iterable[Batch]] | None = None,
        progress: bool = True,
        gradient_hook: Callable[[MetaLearner], None] | None = None,
    ) -> None:
        self.group = group
        self.share = check_split(cfg.training.meta_batch_size, group.world_size)

        def hook(learner: MetaLearner) -> None:  # average first, so a user's hook (clipping...) sees the mean
            average_gradients(learner, group.world_size)
            if gradient_hook is not None:
                gradient_hook(learner)

        super().__init__(cfg, learner, tasks, val_batches=val_batches, device=group.device,
                         progress=progress and group.rank == 0, gradient_hook=hook)
        _flat_collective(self.learner.state_dict().values(), lambda flat: dist.broadcast(flat, src=0))
        if learner.updates_itself:  # its update averages what it needs (TRPO: gradients, line search)
            learner.process_mean = mean_over_processes(group.world_size)
        self._seed_rank_rng()

    def _seed_rank_rng(self) -> None:
        """Give ranks > 0 their own torch stream (dropout masks...); rank 0 keeps the one-process stream."""
        if self.group.rank > 0:
            torch.manual_seed(hash((self.cfg.training.seed, self.group.rank, self.iteration)) % 2**63)

    def sample(self) -> Batch:
        """This rank's slice of the full meta-batch, which every rank draws from the same stream."""
        start = self.group.rank * self.share
        return super().sample()[start : start + self.share]

    def step(self, batch: Batch) -> dict[str, float]:
        """One step on the averaged gradient; the metrics returned (and logged) are means over all ranks."""
        metrics = super().step(batch)
        values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(metrics, (values / self.group.world_size).tolist()))

    def validate(self) -> float | None:
        """Rank 0 validates and shares its score, so every rank keeps the same best score."""
        if self.val_batches is None:
            return None
        score = super().validate() if self.group.rank == 0 else 0.0
        shared = torch.tensor([score], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return shared.item()

    def should_stop(self, stop: StopRequest) -> bool:
        """Stop when any process was signalled, all at the same iteration (one scalar all-reduce a step)."""
        flag = torch.tensor([0.0 if stop.requested is None else 1.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def say(self, message: str) -> None:
        if self.group.rank == 0:
            super().say(message)

    def state(self) -> dict:
        state = super().state()
        per_rank: list[Any] = [None] * self.group.world_size
        dist.all_gather_object(per_rank, state["rng"])
        state["rng_per_rank"] = per_rank
        return state

    def load_state(self, payload: dict) -> None:
        super().load_state(payload)  # restores rank 0's generators, the only ones a one-process checkpoint has
        per_rank = payload.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.group.world_size:
            restore_rng_state(per_rank[self.group.rank], self.generator)
        else:  # saved by another number of processes: the task stream is shared, the rest is reseeded
            self._seed_rank_rng()

    def _truncate_log(self, iteration: int) -> None:
        if self.group.rank == 0:
            super()._truncate_log(iteration)

    def fit(self, is_writer: bool | None = None) -> TrainResult:
        """Train; only rank 0 writes the run directory unless ``is_writer`` says otherwise."""
        return super().fit(is_writer=self.group.rank == 0 if is_writer is None else is_writer)
