"""Turn a ``Config`` into the objects of a run: task distributions, model, learner.

The registries below are the single place that knows every task family and
every method by name, so the CLI and the Python API accept the same names.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastadapt import algorithms
from fastadapt.algorithms.base import MetaLearner
from fastadapt.models import MLP
from fastadapt.tasks import SinusoidTasks
from fastadapt.tasks.base import TaskDistribution
from fastadapt.training.config import Config


def _sinusoid(cfg: Config, split: str) -> TaskDistribution:
    return SinusoidTasks(k_shot=cfg.k_shot, num_query=cfg.num_query)


TASK_FAMILIES: dict[str, Callable[[Config, str], TaskDistribution]] = {
    "sinusoid": _sinusoid,
}


def build_tasks(cfg: Config, split: str = "train") -> TaskDistribution:
    if cfg.tasks not in TASK_FAMILIES:
        raise ValueError(f"unknown task family {cfg.tasks!r}; choose one of {sorted(TASK_FAMILIES)}")
    return TASK_FAMILIES[cfg.tasks](cfg, split)


def build_model(cfg: Config, tasks: TaskDistribution) -> nn.Module:
    kind = cfg.model
    if kind == "auto":
        kind = "mlp" if cfg.tasks == "sinusoid" else "conv4"
    if kind == "mlp":
        return MLP(getattr(tasks, "input_size", 1), tasks.output_size, tuple(cfg.hidden_sizes))
    raise ValueError(f"unknown model {cfg.model!r}; choose 'mlp' or 'auto'")


def _gradient_based(cls: type[algorithms.MAML], **fixed) -> Callable[[Config, TaskDistribution], MetaLearner]:
    def build(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
        options = dict(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, eval_inner_steps=cfg.eval_inner_steps,
                       first_order=cfg.first_order)
        options.update(fixed)
        return cls(build_model(cfg, tasks), tasks.loss, **options)

    return build


ALGORITHMS: dict[str, Callable[[Config, TaskDistribution], MetaLearner]] = {
    "maml": _gradient_based(algorithms.MAML),
    "fomaml": _gradient_based(algorithms.MAML, first_order=True),
    "metasgd": _gradient_based(algorithms.MetaSGD),
    "reptile": _gradient_based(algorithms.Reptile),
    "pretrained": _gradient_based(algorithms.Pretrained),
}


def build_learner(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    torch.manual_seed(cfg.seed)
    return ALGORITHMS[cfg.algorithm](cfg, tasks)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
