"""Turn a ``Config`` into the task distributions of a run.

What a method is and what a task family is come from their specifications (``algorithms.registry``,
``config.families``); this module draws a run's tasks from them, so the CLI and the Python API accept the same
names and build the same tasks. The learner is built beside the run directories (``runs.directory``), since it
may start from another run.
"""
from __future__ import annotations

from fastadapt.algorithms.registry import method_of
from fastadapt.config.families import WITHIN_ALPHABET_WAY, alphabet_episodes, family_of, within_alphabet_episodes
from fastadapt.config.provenance import evaluation_alphabets_seen
from fastadapt.config.schema import WITHIN_ALPHABET, Config
from fastadapt.datasets import ClassDataset
from fastadapt.tasks import ClassMiniBatches, EpisodeTasks
from fastadapt.tasks.base import TaskDistribution, seed_of_test_set

#: Queries per class in training episodes when the config leaves num_query unset.
DEFAULT_TRAIN_QUERY = 15


def build_tasks(cfg: Config, split: str = "train") -> TaskDistribution:
    """Training tasks (``split`` "train") or the validation / test tasks of the run's main setting (with
    ``episodes`` within-alphabet, those trials: they choose the best checkpoint)."""
    family = family_of(cfg)
    if cfg.task.balanced_directions and not family.balanced_directions:
        raise ValueError(f"balanced directions are for the forward/backward families, not {cfg.task.family}")
    if family.kind != "images":
        return family.build(cfg, split)
    if split != "train" and cfg.evaluation.episodes == WITHIN_ALPHABET:
        return within_alphabet_tasks(cfg, split)
    if split == "train" and method_of(cfg).minibatch_trained:
        return ClassMiniBatches(class_dataset(cfg, "train"))
    way, shot = (cfg.task.n_way, cfg.task.k_shot) if split == "train" else eval_settings(cfg)[0]
    return episodes(cfg, split, way, shot)


def class_dataset(cfg: Config, split: str) -> ClassDataset:
    """The classes of ``split``; training classes also rotated with ``rotate_train_classes``."""
    task = cfg.task
    dataset = family_of(cfg).build(cfg, split)
    if split == "train" and task.rotate_train_classes:  # a rotated character is a new one (Vinyals; Santoro)
        dataset = dataset.with_rotations()
    return dataset


def episodes(cfg: Config, split: str, way: int, shot: int) -> EpisodeTasks:
    """``way``-way ``shot``-shot episodes of ``split``'s classes; training ones with ``num_query`` queries per
    class, evaluation ones with ``eval_query``. Sizes the data cannot serve are refused naming their setting."""
    task = cfg.task
    if split == "train" and task.within_alphabet and not family_of(cfg).alphabets:
        raise ValueError(f"--within-alphabet training episodes need Omniglot's alphabets, not {task.family!r} tasks")
    dataset = class_dataset(cfg, split)
    if split == "train":
        query, flags = task.num_query or DEFAULT_TRAIN_QUERY, ("--n-way", "--k-shot", "--num-query")
    else:
        query, flags = cfg.evaluation.eval_query, ("--n-way / --eval-ways", "--k-shot / --eval-shots", "--eval-query")
    if way > dataset.num_classes:
        raise ValueError(f"{way}-way {split} episodes ({flags[0]}) need {way} classes, but "
                         f"{family_of(cfg).describe_split(cfg, split)} are only {dataset.num_classes}")
    counts = dataset.images_per_class
    smallest = int(counts.argmin())
    if counts[smallest] < shot + query:
        raise ValueError(f"{split} episodes of {shot} shots ({flags[1]}) and {query} queries per class ({flags[2]}"
                         f"{'' if split != 'train' or task.num_query else ', default 15'}) need {shot + query} "
                         f"images of every class, but class {dataset.class_names[smallest]!r} of "
                         f"{family_of(cfg).describe_split(cfg, split)} has only {int(counts[smallest])}")
    if split == "train" and task.within_alphabet:
        return alphabet_episodes(dataset, way, shot, query, task.augment)
    return EpisodeTasks(dataset, way, shot, query, augment=task.augment and split == "train")


def within_alphabet_tasks(cfg: Config, split: str) -> EpisodeTasks:
    """Lake et al.'s within-alphabet 20-way 1-shot trials of ``split`` (``families.within_alphabet_episodes``),
    for a method that can classify them. Refused (a ValueError, one line) for a run whose training may have seen
    an evaluation-set alphabet: Lake's rule is background set only."""
    method = method_of(cfg)
    if (not method.any_way and cfg.task.n_way != WITHIN_ALPHABET_WAY) or (method.fixed_shot and cfg.task.k_shot != 1):
        raise ValueError(f"within-alphabet trials are {WITHIN_ALPHABET_WAY}-way 1-shot, and {cfg.method.name} is "
                         f"built for {cfg.task.n_way}-way {cfg.task.k_shot}-shot episodes")
    why = evaluation_alphabets_seen(cfg)
    if why:
        raise ValueError(f"within-alphabet episodes (--episodes within-alphabet) are for runs trained on Omniglot's "
                         f"background set only, and {why}")
    return within_alphabet_episodes(cfg, split)


def fixed_seed(cfg: Config, split: str) -> int:
    """The ``seed`` argument of ``fixed_tasks`` that draws the run's fixed tasks of ``split``: its test set
    (``evaluation.test_set``) for "test", 0 (the one draw) for the other splits."""
    return seed_of_test_set(cfg.evaluation.test_set) if split == "test" else 0


def eval_settings(cfg: Config) -> list[tuple[int, int]]:
    """The (ways, shots) a classification run is evaluated at: eval_ways x eval_shots (default: the training
    ones), less those the method cannot serve (a classification head or memory sized for n_way)."""
    task, evaluation, method = cfg.task, cfg.evaluation, method_of(cfg)
    ways = [w for w in evaluation.eval_ways or [task.n_way] if method.any_way or w == task.n_way]
    shots = [s for s in evaluation.eval_shots or [task.k_shot] if not method.fixed_shot or s == task.k_shot]
    if not ways or not shots:
        raise ValueError(f"{cfg.method.name} is built for {cfg.task.n_way}-way episodes"
                         f"{f' of {cfg.task.k_shot} shots' if method.fixed_shot else ''}; "
                         f"eval_ways {evaluation.eval_ways} / eval_shots {evaluation.eval_shots} "
                         "leave nothing to evaluate")
    return [(w, s) for w in ways for s in shots]
