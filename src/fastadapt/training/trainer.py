"""The meta-training loop: sample a meta-batch of tasks, step the outer optimizer
on the learner's meta-loss, validate, log, checkpoint; resume exactly after a kill."""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from fastadapt.algorithms.base import MetaLearner
from fastadapt.tasks.base import TaskBatch, TaskDistribution
from fastadapt.training.allocator import reuse_freed_memory
from fastadapt.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from fastadapt.training.config import Config
from fastadapt.training.evaluation import evaluate, metric_name
from fastadapt.training.precision import autocast, has_native_bf16

LAST, BEST = "last.pt", "best.pt"


class NonFiniteLossError(FloatingPointError):
    pass


def build_optimizer(
    cfg: Config, learner: MetaLearner
) -> tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimizer; None for a learner with nothing to train (k-NN), which may only run 0 iterations."""
    params = [p for p in learner.parameters() if p.requires_grad]
    if not params:
        if cfg.training.iterations > 0:
            raise ValueError(f"algorithm {cfg.method.name!r} has no parameters to meta-train; "
                             "run it with --iterations 0 to save and evaluate it")
        return None, None
    if cfg.training.meta_optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.training.meta_lr)
    elif cfg.training.meta_optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.training.meta_lr)
    else:
        raise ValueError(f"unknown meta_optimizer {cfg.training.meta_optimizer!r}; choose 'adam' or 'sgd'")
    scheduler = None
    if cfg.training.lr_decay_every > 0:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.training.lr_decay_every,
                                                    gamma=cfg.training.lr_decay)
    return optimizer, scheduler


@dataclass
class TrainResult:
    iterations: int
    best_score: float | None
    run_dir: Path


class Trainer:
    """Meta-trains ``learner`` on ``tasks``; ``val_batches`` gives the fixed validation tasks."""

    def __init__(
        self,
        cfg: Config,
        learner: MetaLearner,
        tasks: TaskDistribution,
        val_batches: Callable[[], Iterable[TaskBatch]] | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
        gradient_hook: Callable[[MetaLearner], None] | None = None,
    ) -> None:
        if torch.device(device).type == "cpu":
            reuse_freed_memory()
        autocast(cfg.training.precision, device)  # refuses an unknown precision, or bf16 where autocast has none
        if cfg.training.precision == "bf16" and not has_native_bf16(device):
            warnings.warn(f"precision bf16: this {torch.device(device).type.upper()} has no native bf16 arithmetic "
                          "(a CPU needs AVX512-BF16 or AMX), so PyTorch runs bf16 in reference kernels, several "
                          "times slower than fp32", stacklevel=2)
        self.cfg, self.learner, self.tasks = cfg, learner.to(device), tasks
        self.val_batches, self.device, self.progress = val_batches, torch.device(device), progress
        self.gradient_hook = gradient_hook
        self.run_dir = Path(cfg.training.output_dir)
        self.optimizer, self.scheduler = build_optimizer(cfg, learner)
        self.generator = torch.Generator().manual_seed(cfg.training.seed)
        self.iteration = 0
        self.best_score: float | None = None
        self.higher_is_better = metric_name(learner) == "accuracy"

    # --- checkpoints ---
    def state(self) -> dict:
        return {
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "iteration": self.iteration,
            "best_score": self.best_score,
            "rng": rng_state(self.generator),
            "config": self.cfg.to_dict(),
        }

    def resume(self) -> bool:
        """Continue from ``last.pt`` in the run directory, if there is one."""
        path = self.run_dir / LAST
        if not path.exists():
            return False
        self.load_state(load_checkpoint(path))
        self._truncate_log(self.iteration)
        return True

    def load_state(self, payload: dict) -> None:
        """The inverse of ``state``."""
        self.learner.load_state_dict(payload["learner"])
        if self.optimizer:
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler and payload["scheduler"]:
            self.scheduler.load_state_dict(payload["scheduler"])
        self.iteration, self.best_score = payload["iteration"], payload["best_score"]
        restore_rng_state(payload["rng"], self.generator)

    def _truncate_log(self, iteration: int) -> None:
        """Drop log lines written after the checkpoint we resume from, so the log matches the run."""
        log = self.run_dir / "metrics.jsonl"
        if log.exists():
            kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
            log.write_text("".join(line + "\n" for line in kept))

    def _save(self, name: str, is_writer: bool) -> None:
        """Every process builds the state (a distributed one gathers all ranks' RNG states); the writer saves it."""
        state = self.state()
        if is_writer:
            save_checkpoint(self.run_dir / name, state)

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    # --- the loop ---
    def step(self, batch: TaskBatch) -> dict[str, float]:
        """One outer step on ``batch``; returns its metrics (means over its tasks).

        The meta-loss runs in the run's precision (bf16 autocast or fp32); its backward pass and the optimizer
        step in fp32. With ``tasks_per_pass`` the tasks go through meta-loss and backward pass a chunk at a
        time, each chunk's loss weighted by its share of the tasks, so the accumulated gradient is the whole
        batch's (up to rounding; exactly the same math unless normalisation pools statistics over a whole
        call, ``--norm batch``) while only one chunk's activations are alive at a time.
        """
        batch = batch.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for chunk in batch.split(self.cfg.training.tasks_per_pass or batch.num_tasks):
            with autocast(self.cfg.training.precision, self.device):
                loss, metrics = self.learner.meta_loss(chunk)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"meta-loss is {loss.item()} at iteration {self.iteration}; the run diverged. "
                    f"Lower meta_lr (now {self.cfg.training.meta_lr}) or inner_lr (now {self.cfg.method.inner_lr}); "
                    f"the last good checkpoint is {self.run_dir / LAST}"
                )
            share = chunk.num_tasks / batch.num_tasks
            (loss * share).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * share
        if self.gradient_hook is not None:
            self.gradient_hook(self.learner)
        self.optimizer.step()
        if self.scheduler:
            self.scheduler.step()
        return totals

    def sample(self) -> TaskBatch:
        return self.tasks.sample(self.cfg.training.meta_batch_size, self.generator)

    def validate(self) -> float | None:
        if self.val_batches is None:
            return None
        estimate = evaluate(self.learner, self.val_batches(), device=self.device,
                            precision=self.cfg.training.precision)[None]
        return estimate.mean

    def is_better(self, score: float) -> bool:
        if self.best_score is None:
            return True
        return score > self.best_score if self.higher_is_better else score < self.best_score

    def fit(self, is_writer: bool = True) -> TrainResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if is_writer:
            cfg.save(self.run_dir / "config.yaml")
        start = time.perf_counter()
        bar = tqdm(total=cfg.training.iterations, initial=self.iteration, disable=not self.progress, unit="it",
                   desc=f"{cfg.method.name} on {cfg.task.family}", dynamic_ncols=True)
        running: dict[str, float] = {}
        with bar:
            while self.iteration < cfg.training.iterations:
                metrics = self.step(self.sample())
                self.iteration += 1
                for key, value in metrics.items():
                    running[key] = running.get(key, 0.0) + value
                bar.update(1)
                done = self.iteration == cfg.training.iterations
                if self.iteration % cfg.training.log_every == 0 or done:
                    count = cfg.training.log_every if self.iteration % cfg.training.log_every == 0 else self.iteration % cfg.training.log_every
                    record = {"iteration": self.iteration, **{k: v / count for k, v in running.items()},
                              "lr": self.optimizer.param_groups[0]["lr"],
                              "seconds": round(time.perf_counter() - start, 3)}
                    running = {}
                    if self.iteration % cfg.training.val_every == 0 or done:
                        score = self.validate()
                        if score is not None:
                            record[f"val_{metric_name(self.learner)}"] = score
                            if not math.isnan(score) and self.is_better(score):
                                self.best_score = score
                                self._save(BEST, is_writer)
                    if is_writer:
                        self._log(record)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("iteration", "seconds")})
                if self.iteration % cfg.training.checkpoint_every == 0 or done:
                    self._save(LAST, is_writer)
        if self.best_score is None:
            self._save(BEST, is_writer)
        return TrainResult(self.iteration, self.best_score, self.run_dir)
