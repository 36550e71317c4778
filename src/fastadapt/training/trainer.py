"""The meta-training loop: sample a meta-batch of tasks, step the outer optimizer
on the learner's meta-loss, validate, log, checkpoint; resume exactly after a kill."""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from fastadapt.algorithms.base import MetaLearner
from fastadapt.config.schema import Config
from fastadapt.tasks.base import Batch, TaskDistribution
from fastadapt.allocator import reuse_freed_memory
from fastadapt.training.captured import captured_step
from fastadapt.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from fastadapt.training.evaluation import evaluate
from fastadapt.training.precision import autocast, has_native_bf16

LAST, BEST = "last.pt", "best.pt"


class NonFiniteLossError(FloatingPointError):
    pass


def build_optimizer(
    cfg: Config, learner: MetaLearner
) -> tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimizer; None for a learner with nothing to train (k-NN), which may only run 0 iterations,
    and for an RL learner whose update needs none (TRPO)."""
    if not learner.uses_optimizer:
        return None, None
    params = [p for p in learner.parameters() if p.requires_grad]
    if not params:
        if cfg.training.iterations > 0:
            raise ValueError(f"algorithm {cfg.method.name!r} has no parameters to meta-train; "
                             "run it with --iterations 0 to save and evaluate it")
        return None, None
    groups: list = params
    if cfg.training.alpha_meta_lr is not None:
        if not hasattr(learner, "architecture_parameters"):
            raise ValueError(f"alpha_meta_lr: algorithm {cfg.method.name!r} has no architecture weights")
        # Architecture weights get their own learning rate (MetaNAS: 0.6 against 1.0 for the weights).
        alphas = {id(p) for p in learner.architecture_parameters()}
        groups = [{"params": [p for p in params if id(p) not in alphas]},
                  {"params": [p for p in params if id(p) in alphas], "lr": cfg.training.alpha_meta_lr}]
    if cfg.training.meta_optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(groups, lr=cfg.training.meta_lr)
    elif cfg.training.meta_optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.training.meta_lr)
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


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped a run; ``last.pt`` holds ``iteration`` (None when it could not be saved)."""

    def __init__(self, run_dir: Path, iteration: int | None, saved_iteration: int | None) -> None:
        self.run_dir, self.iteration, self.saved_iteration = run_dir, iteration, saved_iteration
        where = (f"last.pt holds iteration {saved_iteration}" if saved_iteration is not None
                 else "no checkpoint was saved")
        super().__init__(f"interrupted at iteration {iteration}; {where} in {run_dir}")


class StopRequest:
    """While active, the first SIGINT / SIGTERM asks the loop to stop after the current step, so the state
    it saves is a whole step's; a second SIGINT abandons the step at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal number
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum
        tqdm.write(f"fastadapt: {signal.Signals(signum).name} received: stopping after this step "
                   "(Ctrl-C again to stop at once, without saving)", file=sys.stderr)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


#: Validations without improvement after which the trainer says that validation has stalled.
STALL_VALIDATIONS = 3


def add_image_to_tensorboard(run_dir: Path, tag: str, png: Path, step: int) -> None:
    """A figure's PNG (the learning curves) as an image in RUN_DIR/tensorboard, beside the scalars the trainer
    wrote there, so that TensorBoard shows what ``fastadapt plot`` draws."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    with SummaryWriter(str(Path(run_dir) / "tensorboard")) as writer:
        writer.add_image(tag, pixels, step, dataformats="HWC")


class Trainer:
    """Meta-trains ``learner`` on ``tasks``; ``val_batches`` gives the fixed validation tasks."""

    def __init__(
        self,
        cfg: Config,
        learner: MetaLearner,
        tasks: TaskDistribution,
        val_batches: Callable[[], Iterable[Batch]] | None = None,
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
        self.cfg, self.learner, self.tasks = cfg.resolved(), learner.to(device), tasks
        cfg = self.cfg
        self.val_batches, self.device, self.progress = val_batches, torch.device(device), progress
        self.gradient_hook = gradient_hook
        self.run_dir = Path(cfg.training.output_dir)
        self._tensorboard = None  # a SummaryWriter while fit runs with training.tensorboard
        self.optimizer, self.scheduler = build_optimizer(cfg, learner)
        self.generator = torch.Generator().manual_seed(cfg.training.seed)
        self.iteration = 0
        self.best_score: float | None = None
        self.best_iteration: int | None = None
        self.seconds_before = 0.0  # training time of the run's earlier sessions, when resumed
        self.higher_is_better = learner.metric.higher_is_better
        self._stall_noted = False
        self._start: float | None = None  # when this session's fit began
        self.captured = captured_step(cfg.training.cuda_graph, learner, tasks, self.optimizer,
                                      cfg.training.meta_batch_size, cfg.training.precision, self.device,
                                      self._graph_obstacle(), self.say)

    def _graph_obstacle(self) -> str | None:
        """What in this trainer keeps the step out of a CUDA graph (see training.captured), or None."""
        if type(self).step is not Trainer.step:
            return f"{type(self).__name__} has a step of its own"
        if self.scheduler is not None:
            return "the learning rate changes during the run (lr_decay_every)"
        if self.gradient_hook is not None:
            return "a gradient hook runs between backward pass and optimizer step"
        if self.cfg.training.tasks_per_pass is not None:
            return "tasks_per_pass splits the meta-batch"
        if getattr(self.tasks, "augment", False):
            return "the training images are distorted as they are drawn (augment)"
        return None

    def say(self, message: str) -> None:
        """A line for the person running this, above the progress bar."""
        tqdm.write(f"fastadapt: {message}", file=sys.stderr)

    # --- checkpoints ---
    def state(self) -> dict:
        return {
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "iteration": self.iteration,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "seconds": self.seconds_before + self._session_seconds(),
            "rng": rng_state(self.generator),
            "threads": torch.get_num_threads(),  # a resumed run uses as many (see training.threads)
            "config": self.cfg.to_dict(),
        }

    def resume(self) -> int:
        """Continue from ``last.pt`` in the run directory; returns the iteration it continues from.

        A checkpoint holds the whole state at its iteration, so if ``last.pt`` cannot be read the run
        continues from ``best.pt`` and ends exactly as it would have, redoing the iterations in between.
        """
        last, best = self.run_dir / LAST, self.run_dir / BEST
        if not last.exists():
            raise FileNotFoundError(f"cannot resume: {self.run_dir} holds no {LAST} (no checkpoint was written yet, "
                                    "or this is not a run directory); start the run without --resume")
        try:
            payload = load_checkpoint(last)
        except ValueError as error:
            try:
                payload = load_checkpoint(best)
            except (ValueError, FileNotFoundError):
                raise ValueError(f"cannot resume: {error}; {best} is missing or unreadable too, so the run "
                                 "cannot continue: start it again in a new directory") from None
            self.say(f"{error}; continuing from {BEST} (iteration {payload['iteration']}) instead, which "
                     "gives the same final weights")
        self.load_state(payload)
        self._truncate_log(self.iteration)
        return self.iteration

    def load_state(self, payload: dict) -> None:
        """The inverse of ``state``."""
        self.learner.load_state_dict(payload["learner"])
        if self.optimizer:
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler and payload["scheduler"]:
            self.scheduler.load_state_dict(payload["scheduler"])
        self.iteration, self.best_score = payload["iteration"], payload["best_score"]
        self.best_iteration = payload.get("best_iteration")
        self.seconds_before = payload.get("seconds", 0.0)
        restore_rng_state(payload["rng"], self.generator)
        if self.optimizer:
            for group in self.optimizer.param_groups:
                if group.get("capturable"):  # saved by a captured step; one sets it again (on the GPU only)
                    group["capturable"] = False

    def _truncate_log(self, iteration: int) -> None:
        """Drop log lines written after the checkpoint we resume from, so the log matches the run."""
        log = self.run_dir / "metrics.jsonl"
        if log.exists():
            lines = log.read_text().splitlines()
            kept = [line for line in lines if line and json.loads(line)["iteration"] <= iteration]
            log.write_text("".join(line + "\n" for line in kept))

    def _save(self, name: str, is_writer: bool) -> None:
        """Every process builds the state (a distributed one gathers all ranks' RNG states); the writer saves it.
        A captured step's run is checked for divergence first, so that no non-finite weights are saved."""
        if self.captured is not None and self.captured.has_diverged():
            self._diverged()
        state = self.state()
        if is_writer:
            save_checkpoint(self.run_dir / name, state)

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(key, value, record["iteration"])
            self._tensorboard.flush()

    def _open_tensorboard(self) -> None:
        """With ``training.tensorboard``: a writer of RUN_DIR/tensorboard that drops the events a resumed run
        logs again (those after its checkpoint), as metrics.jsonl is truncated."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.iteration + 1)

    # --- the loop ---
    def step(self, batch: Batch) -> dict[str, float]:
        """One outer step on ``batch``; returns its metrics (means over its tasks).

        The meta-loss runs in the run's precision (bf16 autocast or fp32); its backward pass and the optimizer
        step in fp32. With ``tasks_per_pass`` the tasks go through meta-loss and backward pass a chunk at a
        time, each chunk's loss weighted by its share of the tasks, so the accumulated gradient is the whole
        batch's (up to rounding; exactly the same math unless normalisation pools statistics over a whole
        call, ``--norm batch``) while only one chunk's activations are alive at a time. An RL learner takes
        the whole outer update itself (``rl_step``).
        """
        if self.learner.updates_itself:
            return self.rl_step(batch)
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

    def _diverged(self) -> None:
        raise NonFiniteLossError(
            f"a meta-loss turned non-finite before iteration {self.iteration} (the captured step checks at log "
            f"lines and checkpoints); the run diverged. Lower meta_lr (now {self.cfg.training.meta_lr}) or "
            f"inner_lr (now {self.cfg.method.inner_lr}); the last good checkpoint is {self.run_dir / LAST}")

    def _captured_sums(self) -> dict[str, float]:
        """The captured step's metric sums since the last log line (it keeps them on the GPU until asked)."""
        sums, diverged = self.captured.take_sums()
        if diverged:
            self._diverged()
        return sums

    def rl_step(self, batch) -> dict[str, float]:
        """An RL learner's outer update is not one optimizer step on one loss (a TRPO step with its line search,
        several PPO epochs): it takes the whole update, with the trainer's optimizer if it uses one."""
        metrics = self.learner.meta_update(batch.to(self.device), self.optimizer)
        if not math.isfinite(metrics["return"]):
            raise NonFiniteLossError(f"the mean return is {metrics['return']} at iteration {self.iteration}: "
                                     f"the run diverged; the last good checkpoint is {self.run_dir / LAST}")
        if self.gradient_hook is not None:
            self.gradient_hook(self.learner)
        if self.scheduler:
            self.scheduler.step()
        return metrics

    def sample(self) -> Batch:
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

    def should_stop(self, stop: StopRequest) -> bool:
        """Whether a signal asked the run to stop (a distributed run agrees on it across processes)."""
        return stop.requested is not None

    def _session_seconds(self) -> float:
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def _validation_record(self, is_writer: bool, training_accuracy: float | None) -> dict[str, float]:
        score = self.validate()
        if score is None:
            return {}
        if not math.isnan(score) and self.is_better(score):
            self.best_score, self.best_iteration = score, self.iteration
            self._save(BEST, is_writer)
        self._note_stall(training_accuracy)
        return {f"val_{self.learner.metric.name}": score}

    def _note_stall(self, training_accuracy: float | None) -> None:
        """Say once when validation has not improved for a while although training accuracy is high."""
        val_every = self.cfg.training.val_every
        if (self._stall_noted or training_accuracy is None or self.best_iteration is None
                or self.iteration - self.best_iteration < STALL_VALIDATIONS * val_every):
            return
        if training_accuracy > self.best_score + 0.05:
            self._stall_noted = True
            self.say(f"validation accuracy has not improved since iteration {self.best_iteration} "
                     f"(best {self.best_score:.3f}) while training accuracy is {training_accuracy:.3f}: "
                     "the model is fitting the training classes, not learning to learn. More classes, "
                     "--rotate-train-classes, or fewer iterations may help; best.pt keeps the best weights")

    def _take_step(self) -> dict[str, float]:
        """One outer step and its metrics: the captured step where there is one (the same tasks as ``sample``,
        as indices; its metrics stay on the GPU until a log line). A second Ctrl-C abandons the step, and
        last.pt stays as it was."""
        try:
            if self.captured is not None:
                self.captured.step(self.tasks.sample_indices(self.cfg.training.meta_batch_size, self.generator))
                return {}
            return self.step(self.sample())
        except KeyboardInterrupt:
            last = self.run_dir / LAST
            saved = load_checkpoint(last)["iteration"] if last.exists() else None
            raise TrainingInterrupted(self.run_dir, self.iteration, saved) from None

    def _means_since_log(self, running: dict[str, float], steps: int) -> dict[str, float]:
        """The mean of each training metric over the ``steps`` since the last log line, and the learning rate."""
        if self.captured is not None:
            running = self._captured_sums()
        record = {key: value / steps for key, value in running.items()}
        if self.optimizer is not None:
            record["lr"] = self.optimizer.param_groups[0]["lr"]
        return record

    def fit(self, is_writer: bool = True) -> TrainResult:
        """Train to ``iterations``: log every ``log_every``, validate every ``val_every`` and save ``last.pt``
        every ``checkpoint_every`` iterations, and all three at the last one. SIGINT / SIGTERM save
        ``last.pt`` after the current step and raise ``TrainingInterrupted``."""
        cfg = self.cfg.training
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if is_writer:
            self.cfg.save(self.run_dir / "config.yaml")
        if is_writer and self.cfg.training.tensorboard:
            self._open_tensorboard()
        self._start = time.perf_counter()
        bar = tqdm(total=cfg.iterations, initial=self.iteration, disable=not self.progress, unit="it",
                   desc=f"{self.cfg.method.name} on {self.cfg.task.family}", dynamic_ncols=True)
        running: dict[str, float] = {}
        since_log = 0
        training_accuracy: float | None = None  # the latest logged mean, for the stalled-validation note
        with bar, StopRequest() as stop:
            while self.iteration < cfg.iterations:
                metrics = self._take_step()
                self.iteration += 1
                since_log += 1
                for key, value in metrics.items():
                    running[key] = running.get(key, 0.0) + value
                bar.update(1)
                done = self.iteration == cfg.iterations
                record: dict[str, float] = {}
                if self.iteration % cfg.log_every == 0 or done:
                    record = self._means_since_log(running, since_log)
                    training_accuracy = record.get("accuracy")
                    running, since_log = {}, 0
                if self.iteration % cfg.val_every == 0 or done:
                    record.update(self._validation_record(is_writer, training_accuracy))
                if record:
                    record = {"iteration": self.iteration, **record,
                              "seconds": round(self.seconds_before + self._session_seconds(), 3)}
                    if is_writer:
                        self._log(record)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("iteration", "seconds")})
                elif "return" in running:  # RL: the running mean return since the last log line, every step
                    bar.set_postfix({"return": f"{running['return'] / since_log:.4g}"}, refresh=False)
                if self.should_stop(stop):
                    self._save(LAST, is_writer)
                    raise TrainingInterrupted(self.run_dir, self.iteration, self.iteration)
                if self.iteration % cfg.checkpoint_every == 0 or done:
                    self._save(LAST, is_writer)
        if self.best_score is None:
            self._save(BEST, is_writer)
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        return TrainResult(self.iteration, self.best_score, self.run_dir)
