"""What a task family is: a ``FamilySpec`` per family, in one registry (``FAMILIES``).

A family says how it builds each split (a task distribution, or for image families the classes of the split,
from which episodes are drawn), its defaults (meta-batch size, horizon), what its evaluation measures (the
title of the results table), how the presets table describes its episodes, which extra plots ``fastadapt
plot`` draws for it, and how its image files are read (``inputs.json``). An application plugs in here.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from fastadapt.datasets import ClassDataset, load_image_folder, load_omniglot
from fastadapt.datasets.cluttered_omniglot import SPLITS as CLUTTERED_OMNIGLOT
from fastadapt.datasets.cluttered_omniglot import glyph_tensor, load_glyphs
from fastadapt.datasets.digits import load_digits_dataset
from fastadapt.datasets.omniglot import SPLITS as OMNIGLOT_SPLITS
from fastadapt.datasets.omniglot import alphabet_of, drawers_of
from fastadapt.tasks import (BanditTasks, LocomotionTasks, Navigation2DTasks, SinusoidTasks, TabularMDPTasks,
                            WithinAlphabetEpisodes)
from fastadapt.tasks.base import TaskDistribution
from fastadapt.tasks.cluttered_omniglot import ClutteredOmniglotTasks, OfficialCanvases
from fastadapt.tasks.detection import DetectionEpisodes
from fastadapt.tasks.mdp import LOCOMOTION_FAMILIES, MDPTaskDistribution
from fastadapt.threads import available_cores

if TYPE_CHECKING:
    from fastadapt.config.schema import Config

#: Share of a folder's classes that go to train and val when it has no train/val/test sub-folders.
FOLDER_SPLIT = {"train": 0.6, "val": 0.2}
#: The kinds of family: what ``build`` returns and which methods learn there.
KINDS = ("regression", "images", "mdp", "segmentation", "detection")
#: Which official cluttered-Omniglot split each of a run's splits is (training canvases are drawn on the fly).
CLUTTERED_SPLITS = {"train": "train", "val": "val-one-shot", "test": "test-one-shot"}


@dataclass(frozen=True)
class FamilySpec:
    """A task family (``--tasks``)."""

    name: str
    #: "regression", "mdp", "segmentation" and "detection": ``build`` gives the split's task distribution
    #: (segmentation: drawn on the fly for training, the fixed official canvases for val and test); "images": the
    #: split's classes
    kind: str
    build: Callable[[Config, str], Any]
    #: what its evaluation measures, for the results table's title (image families: where the images are from)
    title: Callable[[Config], str]
    #: its episodes in a few words, for the presets table
    episodes: Callable[[Config], str]
    #: tasks per meta-batch when the config leaves it unset
    meta_batch: int = 4
    #: steps per episode (pulls per trial for bandits) when the config leaves it unset; None: no horizon
    horizon: int | None = None
    #: the extra figures ``fastadapt plot`` draws: "trajectories", "frames" (a feed-forward policy's runs),
    #: "canvases" (a segmenter's masks)
    plots: tuple[str, ...] = field(default=())
    #: image files hold dark ink on a light background, inverted when read (Omniglot's PNGs)
    inverted_files: bool = False
    #: a resumed run may read its data from another data_root (the same archives, keyed by their checksums)
    data_root_may_move: bool = False
    #: training meta-batches may hold as many forward as backward tasks (--balanced-directions)
    balanced_directions: bool = False
    #: checks the family's own settings by name before a run starts (a ValueError for a bad one)
    check: Callable[[Config], None] = lambda cfg: None
    #: where the classes of a split come from, in words, for error messages (image families)
    describe_split: Callable[[Config, str], str] = lambda cfg, split: f"the {split} classes of {cfg.task.family}"
    #: its data in words, for the server's page
    words: Callable[[Config], str] = lambda cfg: cfg.task.family
    #: reads ``--dataset-split`` (which of its class splits a run uses: Omniglot's)
    dataset_splits: bool = False
    #: its images are drawings like Omniglot's, so a drawing from the server's page is redrawn as those look
    omniglot_drawings: bool = False
    #: its classes are the characters of alphabets (within-alphabet episodes: Lake et al.'s one-shot trials)
    alphabets: bool = False
    #: hand-designed bandit algorithms (a method spec's ``bandit``) run on its tasks
    bandit: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task family {self.name}: kind must be one of {KINDS}, got {self.kind!r}")


# --- how each family builds a split ---
def check_name(flag: str, value: str, choices: Iterable[str]) -> None:
    """A name one of ``choices`` (a flag's value); else a ValueError naming the closest."""
    choices = sorted(choices)
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        raise ValueError(f"unknown {flag.lstrip('-').replace('-', ' ')} {value!r} ({flag})"
                         + (f": did you mean {close[0]!r}?" if close else "") + f" Choose one of {choices}")


def _check_omniglot(cfg: Config) -> None:
    check_name("--dataset-split", cfg.task.dataset_split, OMNIGLOT_SPLITS)


def _sinusoid(cfg: Config, split: str) -> TaskDistribution:
    return SinusoidTasks(k_shot=cfg.task.k_shot, num_query=cfg.task.num_query)


def _omniglot(cfg: Config, split: str) -> ClassDataset:
    if cfg.task.rotate_train_classes and cfg.task.dataset_split == "vinyals":
        raise ValueError("rotate_train_classes: the vinyals split already rotates every class")
    return load_omniglot(cfg.task.data_root, cfg.task.dataset_split, subset=split, image_size=cfg.task.image_size)


#: Classes of Lake et al.'s one-shot trials (within one alphabet)
WITHIN_ALPHABET_WAY = 20


def within_alphabet_episodes(cfg: Config, split: str) -> WithinAlphabetEpisodes:
    """Lake et al.'s (2015) within-alphabet 20-way 1-shot trials, one query per class, on ``split``'s classes
    of the background split: test on the evaluation set's 20 alphabets (all have at least 20 characters),
    validation on ``datasets.omniglot.VAL_ALPHABETS``, which that split holds out of training (for runs whose
    training saw no evaluation-set alphabet: ``config.provenance.evaluation_alphabets_seen``)."""
    return alphabet_episodes(FAMILIES[cfg.task.family].build(cfg, split), WITHIN_ALPHABET_WAY, 1, 1)


def alphabet_episodes(dataset: ClassDataset, n_way: int, k_shot: int, num_query: int,
                      augment: bool = False) -> WithinAlphabetEpisodes:
    """Within-alphabet episodes of Omniglot classes (``datasets.omniglot.alphabet_of`` their names: a rotated
    alphabet is an alphabet of its own), support and query by different drawers (``drawers_of``)."""
    return WithinAlphabetEpisodes(dataset, [alphabet_of(name) for name in dataset.class_names], drawers_of(dataset),
                                  n_way, k_shot, num_query, augment)


@lru_cache(maxsize=4)
def _read_folder(path: str, image_size: int, channels: int | None, skip_unreadable: bool) -> ClassDataset:
    return load_image_folder(path, image_size, channels, skip_unreadable)


def _folder(cfg: Config, split: str) -> ClassDataset:
    """``data_root``/{train,val,test}/<class>/<images> if those sub-folders exist, else ``data_root``/<class>/...
    with its classes split 60/20/20 by a fixed shuffle."""
    if cfg.task.data_root is None:
        raise ValueError("tasks 'folder' needs data_root: a folder of class sub-folders of images (--data-root)")
    root = Path(cfg.task.data_root).expanduser()
    if (root / "train").is_dir():
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root} has a train/ sub-folder but no {split}/ one; give it {split}/<class>/...")
        _check_disjoint_splits(root)
        return _read_folder(str(root / split), cfg.task.image_size, cfg.task.channels,
                            cfg.task.skip_unreadable)
    dataset = _read_folder(str(root), cfg.task.image_size, cfg.task.channels, cfg.task.skip_unreadable)
    order = torch.randperm(dataset.num_classes, generator=torch.Generator().manual_seed(0)).tolist()
    train_end = round(FOLDER_SPLIT["train"] * len(order))
    val_end = train_end + round(FOLDER_SPLIT["val"] * len(order))
    parts = {"train": order[:train_end], "val": order[train_end:val_end], "test": order[val_end:]}
    if not all(parts.values()):
        raise ValueError(f"data_root {root} has only {dataset.num_classes} classes, too few to split 60/20/20 "
                         "into train/val/test; give it more classes, or train/, val/ and test/ sub-folders")
    return dataset.subset(sorted(parts[split]))


def _digits(cfg: Config, split: str) -> ClassDataset:
    """scikit-learn's 8x8 handwritten digits, all 10 classes: a domain to evaluate on, not to train on."""
    if split != "test":
        raise ValueError("tasks 'digits' (10 classes) is for evaluation only: train on omniglot or a folder, then "
                         "`fastadapt eval RUN_DIR --tasks digits`")
    return load_digits_dataset(cfg.task.image_size, cfg.task.channels or 1)


def _check_disjoint_splits(root: Path) -> None:
    """A class in two of train/, val/, test/ would let the test set leak into training: refused."""
    classes = {split: {d.name for d in (root / split).iterdir() if d.is_dir() and not d.name.startswith(".")}
               for split in ("train", "val", "test") if (root / split).is_dir()}
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(classes.get(first, set()) & classes.get(second, set()))
        if shared:
            raise ValueError(f"{root}: {first}/ and {second}/ share the class name(s) {shared[:5]}; a class in "
                             "two splits would let the evaluation classes leak into training")


def _omniglot_split(cfg: Config, split: str) -> str:
    return f"the {split} classes of Omniglot's {cfg.task.dataset_split!r} split (--dataset-split)"


def _folder_split(cfg: Config, split: str) -> str:
    root = Path(cfg.task.data_root or ".").expanduser()
    if (root / "train").is_dir():
        return f"{root / split}"
    return (f"the {split} classes of {root} (a folder without train/val/test sub-folders has its classes split "
            f"60/20/20 into train/val/test)")


def _cluttered_omniglot(cfg: Config, split: str) -> ClutteredOmniglotTasks | OfficialCanvases:
    """Cluttered Omniglot (Michaelis et al. 2018) at ``characters`` per canvas: training canvases drawn on the
    fly from the background alphabets (drawers 1-10), validation and test the official val-one-shot and
    test-one-shot canvases (the first 10 and the last 10 evaluation alphabets, drawers 11-20)."""
    official = CLUTTERED_SPLITS[split]
    root = None if cfg.task.data_root is None else str(Path(cfg.task.data_root).expanduser())
    if split == "train":
        return ClutteredOmniglotTasks(_cluttered_glyphs(official, root), cfg.task.characters,
                                      CLUTTERED_OMNIGLOT[official].drawers)
    return _official_canvases(official, cfg.task.characters, root)


def _check_cluttered_omniglot(cfg: Config) -> None:
    if cfg.evaluation.test_set != 1:
        raise ValueError(f"--test-set {cfg.evaluation.test_set}: cluttered-omniglot's test set is the official "
                         "test-one-shot canvases, one fixed set (test set 1)")


@lru_cache(maxsize=3)
def _cluttered_glyphs(split: str, root: str | None) -> torch.Tensor:
    return glyph_tensor(load_glyphs(split, root))


@lru_cache(maxsize=4)
def _official_canvases(split: str, characters: int, root: str | None) -> OfficialCanvases:
    """One per split and level, so that its jobs, once generated, serve every validation of a run."""
    return OfficialCanvases(load_glyphs(split, root), characters, split)


#: Query canvases per detection episode when the config leaves num_query unset.
DETECTION_CANVASES = 4


def _detection(cfg: Config, split: str) -> DetectionEpisodes:
    """K-shot detection episodes (our extension of cluttered Omniglot): training episodes from the background
    alphabets (drawers 1-10), validation and test ones from val-one-shot's and test-one-shot's characters
    (drawers 11-20), fixed by seed."""
    official = CLUTTERED_SPLITS[split]
    root = None if cfg.task.data_root is None else str(Path(cfg.task.data_root).expanduser())
    return DetectionEpisodes(_cluttered_glyphs(official, root), cfg.task.n_way, cfg.task.k_shot,
                             cfg.task.num_query or DETECTION_CANVASES, cfg.task.characters,
                             CLUTTERED_OMNIGLOT[official].drawers)


# --- MDP families (reinforcement learning); the same tasks for every split, drawn with the split's seeds ---
def _nav2d(cfg: Config, split: str) -> MDPTaskDistribution:
    return Navigation2DTasks(horizon=horizon(cfg), observe_goal=cfg.task.observe_goal)


def _bandit(cfg: Config, split: str) -> MDPTaskDistribution:
    return BanditTasks(arms=cfg.task.arms, pulls=horizon(cfg))


def _tabular_mdp(cfg: Config, split: str) -> MDPTaskDistribution:
    return TabularMDPTasks(states=cfg.task.states, actions=cfg.task.actions, horizon=horizon(cfg),
                           episodes=cfg.task.trial_episodes)


def _locomotion(cfg: Config, split: str) -> MDPTaskDistribution:
    """A MuJoCo family; its rollouts run in ``rollout_workers`` processes (default: one per available core)."""
    workers = cfg.training.rollout_workers
    return LocomotionTasks(cfg.task.family, horizon=horizon(cfg),
                           workers=available_cores() if workers is None else workers,
                           balanced_directions=cfg.task.balanced_directions)


def horizon(cfg: Config) -> int | None:
    """The run's horizon: ``task.horizon``, else its family's default."""
    return cfg.task.horizon or FAMILIES[cfg.task.family].horizon


# --- what evaluation measures, and the presets table's words ---
def _classes(cfg: Config) -> str:
    return f"{cfg.task.n_way}-way {cfg.task.k_shot}-shot"


def _trajectories(cfg: Config) -> str:
    return f"{cfg.task.trajectories} traj."


def _sinusoid_title(cfg: Config) -> str:
    return f"sinusoid, K={cfg.task.k_shot}: MSE on {cfg.evaluation.test_tasks} fixed test tasks (mean ± 95% CI)"


def _rl_title(what: Callable[[Config], str]) -> Callable[[Config], str]:
    return lambda cfg: f"{what(cfg)}; mean ± 95% CI over {cfg.evaluation.test_tasks} fixed test tasks"


def _nav2d_title(cfg: Config) -> str:
    task = cfg.task
    return (f"2D navigation{' (goal observed: oracle)' if task.observe_goal else ''}, horizon {horizon(cfg)}: "
            f"return (sum of -L2 distances to the goal) averaged over {task.trajectories} trajectories per goal, "
            "after each number of policy-gradient steps")


def _bandit_title(cfg: Config) -> str:
    return f"Bernoulli bandits, k={cfg.task.arms} arms, n={horizon(cfg)} pulls: total reward of a trial"


def _tabular_title(cfg: Config) -> str:
    task = cfg.task
    return (f"tabular MDPs, {task.states} states x {task.actions} actions, {task.trial_episodes} episodes of "
            f"{horizon(cfg)} steps: total reward of a trial")


def _cluttered_title(cfg: Config) -> str:
    return (f"cluttered Omniglot, {cfg.task.characters} characters per canvas: mask IoU (foreground probability "
            f"above 0.3) and localisation; mean ± 95% CI over the first {cfg.evaluation.test_tasks} official "
            "one-shot canvases (last job first)")


def _detection_title(cfg: Config) -> str:
    return (f"K-shot detection in clutter (our extension of cluttered Omniglot, not comparable with Michaelis et "
            f"al.), {cfg.task.n_way}-way {cfg.task.k_shot}-shot, {cfg.task.num_query or DETECTION_CANVASES} "
            f"canvases of {cfg.task.characters} drawings per episode: AP50 and COCO AP per episode, mean ± 95% CI "
            f"over {cfg.evaluation.test_tasks} fixed episodes")


def _locomotion_title(cfg: Config) -> str:
    family = LOCOMOTION_FAMILIES[cfg.task.family]
    return (f"{family.title}, horizon {horizon(cfg)}: return (sum over steps of {family.reward}) averaged over "
            f"{cfg.task.trajectories} trajectories per task, after each number of policy-gradient steps")


FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (
    FamilySpec("sinusoid", "regression", _sinusoid, _sinusoid_title, lambda cfg: f"K={cfg.task.k_shot}",
               meta_batch=25),
    FamilySpec("omniglot", "images", _omniglot, lambda cfg: f"omniglot, {cfg.task.dataset_split} split", _classes,
               inverted_files=True, data_root_may_move=True, check=_check_omniglot, describe_split=_omniglot_split,
               words=lambda cfg: f"Omniglot ({cfg.task.dataset_split} split)", dataset_splits=True,
               omniglot_drawings=True, alphabets=True),
    FamilySpec("folder", "images", _folder, lambda cfg: f"folder {cfg.task.data_root}", _classes,
               describe_split=_folder_split, words=lambda cfg: f"image folder {cfg.task.data_root}"),
    FamilySpec("digits", "images", _digits, lambda cfg: "digits", _classes),
    FamilySpec("nav2d", "mdp", _nav2d, _rl_title(_nav2d_title), _trajectories, meta_batch=20, horizon=100,
               plots=("trajectories",)),
    FamilySpec("bandit", "mdp", _bandit, _rl_title(_bandit_title),
               lambda cfg: f"k={cfg.task.arms}, n={horizon(cfg)}", meta_batch=250, horizon=100, bandit=True),
    FamilySpec("tabular-mdp", "mdp", _tabular_mdp, _rl_title(_tabular_title), _trajectories, meta_batch=250,
               horizon=10),
    FamilySpec("cluttered-omniglot", "segmentation", _cluttered_omniglot, _cluttered_title,
               lambda cfg: f"{cfg.task.characters} characters", meta_batch=32, data_root_may_move=True,
               check=_check_cluttered_omniglot, plots=("canvases",)),
    FamilySpec("cluttered-omniglot-detection", "detection", _detection, _detection_title,
               lambda cfg: f"{cfg.task.n_way}-way {cfg.task.k_shot}-shot, {cfg.task.characters} characters",
               meta_batch=8, data_root_may_move=True),
    *(FamilySpec(name, "mdp", _locomotion, _rl_title(_locomotion_title),
                 lambda cfg: f"{cfg.task.trajectories} traj., H={horizon(cfg)}", meta_batch=40, horizon=200,
                 plots=("frames",), balanced_directions=True) for name in LOCOMOTION_FAMILIES),
)}


def family_names(kind: str | None = None) -> list[str]:
    """The families of ``kind`` (all with None), in registration order."""
    return [name for name, spec in FAMILIES.items() if kind is None or spec.kind == kind]


def family_of(cfg: Config) -> FamilySpec:
    """The specification of the run's task family."""
    if cfg.task.family not in FAMILIES:
        raise ValueError(f"unknown task family {cfg.task.family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[cfg.task.family]
