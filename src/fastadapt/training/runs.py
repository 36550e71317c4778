"""A run is a directory: config.yaml, metrics.jsonl, last.pt and best.pt.

These functions are the Python API behind ``fastadapt train`` and ``fastadapt eval``.
"""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Iterable

from fastadapt.algorithms.base import MetaLearner
from fastadapt.tasks.base import TaskBatch, TaskDistribution
from fastadapt.training import distributed
from fastadapt.tasks import EpisodeTasks
from fastadapt.training.builders import build_learner, build_tasks, eval_settings, resolve_device
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.config import Config
from fastadapt.training.evaluation import Estimate, evaluate, step_label
from fastadapt.training.precision import check_precision
from fastadapt.training.trainer import BEST, LAST, Trainer, TrainResult

EVAL_CHUNK = 200
#: At most this many input values (512 28x28 images) go into one evaluation chunk of episodes: on CPU a
#: Conv-4 forward over 500 images at a time ran 4x faster than over 4,000, whose activations overflow the caches.
MAX_CHUNK_VALUES = 512 * 28 * 28
#: settings that do not change the trained weights, so a resumed run may change them
RESUMABLE_CHANGES = frozenset({"iterations", "device", "output_dir", "data_root", "log_every", "val_every",
                               "val_tasks", "checkpoint_every", "test_tasks", "eval_steps", "eval_shots",
                               "eval_ways", "eval_query", "eval_inner_steps"})


def fixed_batches(tasks: TaskDistribution, num_tasks: int, split: str, chunk: int = EVAL_CHUNK) -> Iterable[TaskBatch]:
    """The fixed evaluation tasks of a split, in chunks (the same tasks every call).

    Episodes are materialised chunk by chunk, each small enough for one forward pass.
    """
    if isinstance(tasks, EpisodeTasks):
        values = tasks.n_way * (tasks.k_shot + tasks.num_query) * math.prod(tasks.input_shape)
        return tasks.iter_fixed_tasks(num_tasks, max(1, min(chunk, MAX_CHUNK_VALUES // values)), split=split)
    return tasks.fixed_tasks(num_tasks, split=split).split(chunk)


def train(cfg: Config, resume: bool = False, progress: bool = True,
          nproc: int | None = None) -> tuple[TrainResult, MetaLearner]:
    """Meta-train as ``cfg`` says; with ``resume`` continue the run in ``cfg.training.output_dir``.

    ``nproc`` > 1 splits every meta-batch over that many local processes (see
    ``training.distributed``); under torchrun each process runs this function.
    """
    run_dir = Path(cfg.training.output_dir)
    check_precision(cfg.training.precision)
    if (run_dir / LAST).exists() and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-dir"
        )
    if resume and (run_dir / "config.yaml").exists():
        saved = Config.load(run_dir / "config.yaml").flat()
        changed = sorted(k for k, v in cfg.flat().items() if k not in RESUMABLE_CHANGES and saved[k] != v)
        if changed:
            raise ValueError(f"cannot resume {run_dir}: its config.yaml differs from the requested settings in "
                             f"{changed}; only {sorted(RESUMABLE_CHANGES)} may change when resuming")
    if nproc is not None:
        distributed.check_split(cfg.training.meta_batch_size, nproc)
    if nproc is not None and nproc > 1 and distributed.launched_world_size() is None:
        distributed.spawn(train, nproc, cfg, resume=resume, progress=progress)
        payload = load_checkpoint(run_dir / (LAST if (run_dir / LAST).exists() else BEST))
        learner = build_learner(cfg, build_tasks(cfg, "train"))
        learner.load_state_dict(payload["learner"])
        return TrainResult(payload["iteration"], payload["best_score"], run_dir), learner
    with distributed.process_group(cfg.training.device, nproc) as group:  # None in a single process
        tasks = build_tasks(cfg, "train")
        learner = build_learner(cfg, tasks)
        if cfg.training.init_from is not None and not (run_dir / LAST).exists():
            initialise_from(learner, cfg.training.init_from)
        val_tasks = build_tasks(cfg, "val")
        val_batches = partial(fixed_batches, val_tasks, cfg.training.val_tasks, "val")
        if group is None:
            trainer = Trainer(cfg, learner, tasks, val_batches, device=resolve_device(cfg.training.device),
                              progress=progress)
        else:
            trainer = distributed.DistributedTrainer(group, cfg, learner, tasks, val_batches, progress=progress)
        if resume:
            trainer.resume()
        return trainer.fit(), learner


def initialise_from(learner: MetaLearner, run_dir: str | Path) -> None:
    """Load the best weights of the run in ``run_dir`` into ``learner`` (fine-tuning, a lower learning rate
    after a plateau, transfer to another dataset); it must be the same network."""
    path = Path(run_dir) / BEST
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist; give the directory of a finished or running run")
    payload = load_checkpoint(path)
    try:
        learner.load_state_dict(payload["learner"])
    except RuntimeError as error:
        source = Config.from_dict(payload["config"]).method.name
        raise ValueError(f"init_from: the weights in {path} ({source}) do not fit this {type(learner).__name__}: "
                         f"the networks differ. {str(error).splitlines()[0]}") from None


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[Config, MetaLearner]:
    """The config and trained learner of a run (``checkpoint`` is 'best' or 'last')."""
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    payload = load_checkpoint(run_dir / (BEST if checkpoint == "best" else LAST))
    cfg = Config.from_dict(payload["config"])
    learner = build_learner(cfg, build_tasks(cfg, "test"))
    learner.load_state_dict(payload["learner"])
    return cfg, learner


def evaluate_learner(cfg: Config, learner: MetaLearner, num_tasks: int | None = None,
                     steps: list[int] | None = None) -> dict[str, Estimate]:
    """Mean ± 95% CI on the fixed test tasks.

    Regression rows are numbers of adaptation steps; classification rows are
    the run's evaluation settings ("5-way 1-shot", ..., see ``eval_settings``),
    each over the same number of fixed test episodes with ``eval_query``
    queries per class, followed by the number of steps when those are swept.
    """
    device = resolve_device(cfg.training.device)
    learner.to(device)
    num_tasks = num_tasks or cfg.evaluation.test_tasks
    steps = steps if steps is not None else cfg.evaluation.eval_steps
    tasks = build_tasks(cfg, "test")
    if not isinstance(tasks, EpisodeTasks):
        results = evaluate(learner, fixed_batches(tasks, num_tasks, "test"), steps=steps, device=device,
                           precision=cfg.training.precision)
        return {step_label(s): e for s, e in results.items()}
    rows = {}
    for way, shot in eval_settings(cfg):
        episodes = EpisodeTasks(tasks.dataset, way, shot, cfg.evaluation.eval_query)
        results = evaluate(learner, fixed_batches(episodes, num_tasks, "test"), steps=steps, device=device,
                           precision=cfg.training.precision)
        for s, estimate in results.items():
            rows[f"{way}-way {shot}-shot" + ("" if s is None else f", {step_label(s)}")] = estimate
    return rows


def load_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a fastadapt run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
