"""Turn a ``Config`` into the objects of a run: task distributions, model, learner.

The registries below are the single place that knows every task family and
every method by name, so the CLI and the Python API accept the same names.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fastadapt import algorithms
from fastadapt.algorithms.base import MetaLearner
from fastadapt.datasets import ClassDataset, load_image_folder, load_omniglot
from fastadapt.models import MLP, Conv4
from fastadapt.tasks import EpisodeTasks, SinusoidTasks
from fastadapt.tasks.base import TaskDistribution
from fastadapt.training.config import Config

#: Queries per class in training episodes when the config leaves num_query unset.
DEFAULT_TRAIN_QUERY = 15
#: Share of a folder's classes that go to train and val when it has no train/val/test sub-folders.
FOLDER_SPLIT = {"train": 0.6, "val": 0.2}


# --- task families ---
def _sinusoid(cfg: Config, split: str) -> TaskDistribution:
    return SinusoidTasks(k_shot=cfg.task.k_shot, num_query=cfg.task.num_query)


def _omniglot(cfg: Config, split: str) -> ClassDataset:
    return load_omniglot(cfg.task.data_root, cfg.task.dataset_split, subset=split, image_size=cfg.task.image_size)


@lru_cache(maxsize=4)
def _read_folder(path: str, image_size: int, channels: int | None) -> ClassDataset:
    return load_image_folder(path, image_size, channels)


def _folder(cfg: Config, split: str) -> ClassDataset:
    """``data_root``/{train,val,test}/<class>/<images> if those sub-folders exist, else ``data_root``/<class>/...
    with its classes split 60/20/20 by a fixed shuffle."""
    if cfg.task.data_root is None:
        raise ValueError("tasks 'folder' needs data_root: a folder of class sub-folders of images (--data-root)")
    root = Path(cfg.task.data_root).expanduser()
    if (root / "train").is_dir():
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root} has a train/ sub-folder but no {split}/ one; give it {split}/<class>/...")
        return _read_folder(str(root / split), cfg.task.image_size, cfg.task.channels)
    dataset = _read_folder(str(root), cfg.task.image_size, cfg.task.channels)
    order = torch.randperm(dataset.num_classes, generator=torch.Generator().manual_seed(0)).tolist()
    train_end = round(FOLDER_SPLIT["train"] * len(order))
    val_end = train_end + round(FOLDER_SPLIT["val"] * len(order))
    parts = {"train": order[:train_end], "val": order[train_end:val_end], "test": order[val_end:]}
    if not all(parts.values()):
        raise ValueError(f"{root} has only {dataset.num_classes} classes, too few to split into train/val/test")
    return dataset.subset(sorted(parts[split]))


DATASETS: dict[str, Callable[[Config, str], ClassDataset]] = {
    "omniglot": _omniglot,
    "folder": _folder,
}

TASK_FAMILIES: dict[str, Callable[[Config, str], TaskDistribution]] = {"sinusoid": _sinusoid}


def build_tasks(cfg: Config, split: str = "train") -> TaskDistribution:
    """Training tasks (``split`` "train") or the validation / test tasks of the run's main setting."""
    if cfg.task.family in TASK_FAMILIES:
        return TASK_FAMILIES[cfg.task.family](cfg, split)
    if cfg.task.family in DATASETS:
        if cfg.task.rotate_train_classes and cfg.task.family == "omniglot" and cfg.task.dataset_split == "vinyals":
            raise ValueError("rotate_train_classes: the vinyals split already rotates every class")
        dataset = DATASETS[cfg.task.family](cfg, split)
        if split == "train":
            if cfg.task.rotate_train_classes:  # a rotated character is a new character (Vinyals et al.; Santoro et al.)
                dataset = dataset.with_rotations()
            return EpisodeTasks(dataset, cfg.task.n_way, cfg.task.k_shot, cfg.task.num_query or DEFAULT_TRAIN_QUERY)
        way, shot = eval_settings(cfg)[0]
        return EpisodeTasks(dataset, way, shot, cfg.evaluation.eval_query)
    raise ValueError(f"unknown task family {cfg.task.family!r}; choose one of {sorted({**TASK_FAMILIES, **DATASETS})}")


# --- models ---
def resolve_norm(cfg: Config) -> str:
    """'auto': per-task batch statistics for gradient-based methods (the MAML paper's), running ones for the rest."""
    if cfg.model.norm != "auto":
        return cfg.model.norm
    return "transductive" if cfg.method.name in GRADIENT_BASED else "batch"


def build_model(cfg: Config, tasks: TaskDistribution, head: bool = True) -> nn.Module:
    """The network: with ``head`` it outputs what the tasks need, without it an embedding (a feature vector)."""
    kind = cfg.model.name
    if kind == "auto":
        kind = "mlp" if cfg.task.family == "sinusoid" else "conv4"
    if kind != "conv4" and cfg.model.pooling != "max":
        raise ValueError(f"pooling {cfg.model.pooling!r} is a Conv-4 setting; model {kind!r} has no pooling")
    if kind == "mlp":
        return MLP(getattr(tasks, "input_size", 1), tasks.output_size, tuple(cfg.model.hidden_sizes))
    if kind == "conv4":
        shape = getattr(tasks, "input_shape", None)
        if shape is None:
            raise ValueError(f"model 'conv4' needs image tasks, but {cfg.task.family!r} tasks are not images")
        return Conv4(shape[0], cfg.model.conv_channels, tasks.output_size if head else None, resolve_norm(cfg),
                     shape[1:], channels_last=cfg.method.name not in GRADIENT_BASED, pooling=cfg.model.pooling)
    if kind == "pixels":
        if head or cfg.method.name not in PIXEL_INPUT:
            raise ValueError(f"model 'pixels' (no network: raw pixels) serves {sorted(PIXEL_INPUT)} only")
        return nn.Flatten()
    raise ValueError(f"unknown model {cfg.model.name!r}; choose 'mlp', 'conv4', 'pixels' or 'auto'")


def _encoder(cfg: Config, tasks: TaskDistribution) -> tuple[nn.Module, int]:
    """The model without a head and the width of its features."""
    encoder = build_model(cfg, tasks, head=False)
    with torch.no_grad():
        width = encoder.eval()(torch.zeros(2, *tasks.input_shape)).flatten(1).shape[1]
    return encoder.train(), width


# --- algorithms ---
def _gradient_based(cls: type[algorithms.MAML], **fixed) -> Callable[[Config, TaskDistribution], MetaLearner]:
    def build(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
        method = cfg.method
        options = dict(inner_lr=method.inner_lr, inner_steps=method.inner_steps,
                       eval_inner_steps=method.eval_inner_steps, first_order=method.first_order)
        options.update(fixed)
        return cls(build_model(cfg, tasks), tasks.loss, **options)

    return build


def _classifier(
    build: Callable[[Config, EpisodeTasks], MetaLearner]
) -> Callable[[Config, TaskDistribution], MetaLearner]:
    def checked(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
        if not isinstance(tasks, EpisodeTasks):
            raise ValueError(f"algorithm {cfg.method.name!r} classifies images: use tasks 'omniglot' or 'folder', "
                             f"not {cfg.task.family!r}")
        return build(cfg, tasks)

    return checked


def _knn(cfg: Config, tasks: EpisodeTasks) -> MetaLearner:
    """k-NN on raw pixels (``model: pixels``), or in the embedding another run learned (``encoder_from``)."""
    if cfg.method.encoder_from is not None:
        from fastadapt.training.runs import load_run  # runs builds on this module; import when needed

        _, trained = load_run(cfg.method.encoder_from)
        if not hasattr(trained, "encoder"):
            raise ValueError(f"the run in {cfg.method.encoder_from} ({type(trained).__name__}) "
                             "has no encoder to borrow")
        return algorithms.NearestNeighbours(trained.encoder.eval().requires_grad_(False), k=cfg.method.neighbours)
    if cfg.model.name != "pixels":
        raise ValueError("knn has nothing to train: use --model pixels (k-NN on raw pixels), or "
                         "--encoder-from RUN_DIR for k-NN in the embedding another run learned")
    return algorithms.NearestNeighbours(None, k=cfg.method.neighbours)


def _protonet(cfg: Config, tasks: EpisodeTasks) -> MetaLearner:
    return algorithms.PrototypicalNetworks(_encoder(cfg, tasks)[0])


def _matching(cfg: Config, tasks: EpisodeTasks) -> MetaLearner:
    encoder, width = _encoder(cfg, tasks)
    return algorithms.MatchingNetworks(encoder, cfg.method.full_context_embeddings, embedding_size=width,
                                       cosine_scale=cfg.method.cosine_scale)


def _mann(cfg: Config, tasks: EpisodeTasks) -> MetaLearner:
    return algorithms.MANN(*_encoder(cfg, tasks), n_way=cfg.task.n_way)


def _snail(cfg: Config, tasks: EpisodeTasks) -> MetaLearner:
    return algorithms.SNAIL(*_encoder(cfg, tasks), n_way=cfg.task.n_way, k_shot=cfg.task.k_shot)


def _metanet(cfg: Config, tasks: EpisodeTasks) -> MetaLearner:
    return algorithms.MetaNet(*_encoder(cfg, tasks), n_way=cfg.task.n_way)


ALGORITHMS: dict[str, Callable[[Config, TaskDistribution], MetaLearner]] = {
    "maml": _gradient_based(algorithms.MAML),
    "fomaml": _gradient_based(algorithms.MAML, first_order=True),
    "metasgd": _gradient_based(algorithms.MetaSGD),
    "reptile": _gradient_based(algorithms.Reptile),
    "pretrained": _gradient_based(algorithms.Pretrained),
    "protonet": _classifier(_protonet),
    "matching": _classifier(_matching),
    "knn": _classifier(_knn),
    "mann": _classifier(_mann),
    "snail": _classifier(_snail),
    "metanet": _classifier(_metanet),
}
#: Methods that may read raw pixels instead of an embedding (model "pixels").
PIXEL_INPUT = frozenset({"knn", "mann"})
GRADIENT_BASED = frozenset({"maml", "fomaml", "metasgd", "reptile", "pretrained"})
#: Methods that compare queries with the support set, so one trained model serves any number of ways and shots.
ANY_WAY = frozenset({"protonet", "matching", "knn"})
#: Methods built for the training shot count too (SNAIL's sequence length).
FIXED_SHOT = frozenset({"snail"})


def eval_settings(cfg: Config) -> list[tuple[int, int]]:
    """The (ways, shots) a classification run is evaluated at: eval_ways x eval_shots (default: the training
    ones), less those the method cannot serve (a classification head or memory sized for n_way)."""
    task, evaluation, method = cfg.task, cfg.evaluation, cfg.method.name
    ways = [w for w in evaluation.eval_ways or [task.n_way] if method in ANY_WAY or w == task.n_way]
    shots = [s for s in evaluation.eval_shots or [task.k_shot] if method not in FIXED_SHOT or s == task.k_shot]
    if not ways or not shots:
        raise ValueError(f"{cfg.method.name} is built for {cfg.task.n_way}-way episodes"
                         f"{f' of {cfg.task.k_shot} shots' if cfg.method.name in FIXED_SHOT else ''}; "
                         f"eval_ways {evaluation.eval_ways} / eval_shots {evaluation.eval_shots} "
                         "leave nothing to evaluate")
    return [(w, s) for w in ways for s in shots]


def build_learner(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
    if cfg.method.name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.method.name!r}; choose one of {sorted(ALGORITHMS)}")
    torch.manual_seed(cfg.training.seed)
    return ALGORITHMS[cfg.method.name](cfg, tasks)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
