"""Turn a ``Config`` into the objects of a run: task distributions, model, learner.

The registries below are the single place that knows every task family and
every method by name, so the CLI and the Python API accept the same names.
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from fastadapt import algorithms
from fastadapt.algorithms.architecture import ArchitectureLearning
from fastadapt.algorithms.base import MetaLearner, RLMetaLearner
from fastadapt.datasets import ClassDataset, load_image_folder, load_omniglot
from fastadapt.datasets.digits import load_digits_dataset
from fastadapt.datasets.omniglot import SPLITS as OMNIGLOT_SPLITS
from fastadapt.models import MLP, CategoricalMLPPolicy, Conv4, GaussianMLPPolicy, RecurrentPolicy
from fastadapt.models.conv4 import NORMS
from fastadapt.rl import TRPOSettings
from fastadapt.tasks import (BanditTasks, ClassMiniBatches, EpisodeTasks, LocomotionTasks, Navigation2DTasks,
                             SinusoidTasks, TabularMDPTasks)
from fastadapt.models.darts import DiscreteNetwork, Genotype, SearchNetwork, SearchSpace
from fastadapt.tasks.base import TaskDistribution
from fastadapt.tasks.mdp import LOCOMOTION_FAMILIES, MDPTaskDistribution
from fastadapt.training.config import Config
from fastadapt.training.precision import PRECISIONS
from fastadapt.training.threads import available_cores

#: Queries per class in training episodes when the config leaves num_query unset.
DEFAULT_TRAIN_QUERY = 15
#: Share of a folder's classes that go to train and val when it has no train/val/test sub-folders.
FOLDER_SPLIT = {"train": 0.6, "val": 0.2}
#: The file in a metanas / tnas run directory that holds its meta-architecture (of the best checkpoint).
ARCHITECTURE_FILE = "architecture.json"


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
        _check_disjoint_splits(root)
        return _read_folder(str(root / split), cfg.task.image_size, cfg.task.channels)
    dataset = _read_folder(str(root), cfg.task.image_size, cfg.task.channels)
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


def describe_split(cfg: Config, split: str) -> str:
    """Where the classes of ``split`` come from, in words, for error messages."""
    task = cfg.task
    if task.family == "omniglot":
        return f"the {split} classes of Omniglot's {task.dataset_split!r} split (--dataset-split)"
    root = Path(task.data_root or ".").expanduser()
    if (root / "train").is_dir():
        return f"{root / split}"
    return (f"the {split} classes of {root} (a folder without train/val/test sub-folders has its classes split "
            f"60/20/20 into train/val/test)")


DATASETS: dict[str, Callable[[Config, str], ClassDataset]] = {
    "omniglot": _omniglot,
    "folder": _folder,
    "digits": _digits,
}

# --- MDP families (reinforcement learning); the same tasks for every split, drawn with the split's seeds ---
def _nav2d(cfg: Config, split: str) -> MDPTaskDistribution:
    return Navigation2DTasks(horizon=cfg.task.horizon or 100, observe_goal=cfg.task.observe_goal)


def _bandit(cfg: Config, split: str) -> MDPTaskDistribution:
    return BanditTasks(arms=cfg.task.arms, pulls=cfg.task.horizon or 100)


def _tabular_mdp(cfg: Config, split: str) -> MDPTaskDistribution:
    return TabularMDPTasks(states=cfg.task.states, actions=cfg.task.actions, horizon=cfg.task.horizon or 10,
                           episodes=cfg.task.trial_episodes)


def _locomotion(cfg: Config, split: str) -> MDPTaskDistribution:
    """A MuJoCo family; its rollouts run in ``rollout_workers`` processes (default: one per available core)."""
    workers = cfg.training.rollout_workers
    return LocomotionTasks(cfg.task.family, horizon=cfg.task.horizon or 200,
                           workers=available_cores() if workers is None else workers,
                           balanced_directions=cfg.task.balanced_directions)


RL_FAMILIES: dict[str, Callable[[Config, str], MDPTaskDistribution]] = {
    "nav2d": _nav2d,
    "bandit": _bandit,
    "tabular-mdp": _tabular_mdp,
    **{family: _locomotion for family in LOCOMOTION_FAMILIES},
}

TASK_FAMILIES: dict[str, Callable[[Config, str], TaskDistribution]] = {"sinusoid": _sinusoid, **RL_FAMILIES}


def build_tasks(cfg: Config, split: str = "train") -> TaskDistribution:
    """Training tasks (``split`` "train") or the validation / test tasks of the run's main setting."""
    if cfg.task.balanced_directions and cfg.task.family not in LOCOMOTION_FAMILIES:
        raise ValueError(f"balanced directions are for the forward/backward families, not {cfg.task.family}")
    if cfg.task.family in TASK_FAMILIES:
        return TASK_FAMILIES[cfg.task.family](cfg, split)
    if cfg.task.family in DATASETS:
        if split == "train" and cfg.method.name in MINIBATCH_TRAINED:
            return ClassMiniBatches(class_dataset(cfg, "train"))
        way, shot = (cfg.task.n_way, cfg.task.k_shot) if split == "train" else eval_settings(cfg)[0]
        return episodes(cfg, split, way, shot)
    raise ValueError(f"unknown task family {cfg.task.family!r}; choose one of {sorted({**TASK_FAMILIES, **DATASETS})}")


def class_dataset(cfg: Config, split: str) -> ClassDataset:
    """The classes of ``split``; training classes also rotated with ``rotate_train_classes``."""
    task = cfg.task
    if task.rotate_train_classes and task.family == "omniglot" and task.dataset_split == "vinyals":
        raise ValueError("rotate_train_classes: the vinyals split already rotates every class")
    dataset = DATASETS[task.family](cfg, split)
    if split == "train" and task.rotate_train_classes:  # a rotated character is a new one (Vinyals; Santoro)
        dataset = dataset.with_rotations()
    return dataset


def episodes(cfg: Config, split: str, way: int, shot: int) -> EpisodeTasks:
    """``way``-way ``shot``-shot episodes of ``split``'s classes; training ones with ``num_query`` queries per
    class, evaluation ones with ``eval_query``. Sizes the data cannot serve are refused naming their setting."""
    task = cfg.task
    dataset = class_dataset(cfg, split)
    if split == "train":
        query, flags = task.num_query or DEFAULT_TRAIN_QUERY, ("--n-way", "--k-shot", "--num-query")
    else:
        query, flags = cfg.evaluation.eval_query, ("--n-way / --eval-ways", "--k-shot / --eval-shots", "--eval-query")
    if way > dataset.num_classes:
        raise ValueError(f"{way}-way {split} episodes ({flags[0]}) need {way} classes, but "
                         f"{describe_split(cfg, split)} are only {dataset.num_classes}")
    counts = dataset.images_per_class
    smallest = int(counts.argmin())
    if counts[smallest] < shot + query:
        raise ValueError(f"{split} episodes of {shot} shots ({flags[1]}) and {query} queries per class ({flags[2]}"
                         f"{'' if split != 'train' or task.num_query else ', default 15'}) need {shot + query} "
                         f"images of every class, but class {dataset.class_names[smallest]!r} of "
                         f"{describe_split(cfg, split)} has only {int(counts[smallest])}")
    return EpisodeTasks(dataset, way, shot, query)


# --- models ---
def resolve_norm(cfg: Config) -> str:
    """'auto': per-task batch statistics for gradient-based methods (the MAML paper's), running ones for the rest."""
    if cfg.model.norm != "auto":
        return cfg.model.norm
    return "transductive" if cfg.method.name in GRADIENT_BASED else "batch"


def resolve_policy(cfg: Config, tasks: MDPTaskDistribution) -> str:
    """The policy's kind, with 'auto' resolved: RL^2's GRU, else by the task's actions."""
    if cfg.model.policy != "auto":
        return cfg.model.policy
    if cfg.method.name == "rl2":
        return "gru"
    return "gaussian" if tasks.spaces.action_kind == "continuous" else "categorical"


def build_policy(cfg: Config, tasks: MDPTaskDistribution) -> nn.Module:
    """An RL policy for the task family's spaces; one that cannot act there is a one-line error."""
    kind = resolve_policy(cfg, tasks)
    try:
        if kind == "gru":
            return RecurrentPolicy(tasks.spaces, cfg.model.recurrent_size)
        policy = {"gaussian": GaussianMLPPolicy, "categorical": CategoricalMLPPolicy}[kind]
        return policy(tasks.spaces, tuple(cfg.model.hidden_sizes))
    except ValueError as error:
        raise ValueError(f"--policy {kind} on --tasks {cfg.task.family}: {error}") from None


def build_model(cfg: Config, tasks: TaskDistribution, head: bool = True) -> nn.Module:
    """The network: with ``head`` it outputs what the tasks need, without it an embedding (a feature vector)."""
    if cfg.task.family in RL_FAMILIES:
        return build_policy(cfg, tasks)
    kind = resolve_model(cfg)
    if cfg.method.name in ARCHITECTURE_SEARCH and kind != "supernet":
        raise ValueError(f"{cfg.method.name} searches an architecture: its model is the DARTS supernet "
                         f"(--model supernet or auto), not {kind!r}")
    if kind in ("supernet", "darts"):
        return _darts_network(cfg, tasks, kind, head)
    if kind != "conv4" and cfg.model.pooling != "max":
        raise ValueError(f"pooling {cfg.model.pooling!r} is a Conv-4 setting; model {kind!r} has no pooling")
    if kind == "mlp":
        return MLP(getattr(tasks, "input_size", 1), tasks.output_size, tuple(cfg.model.hidden_sizes))
    if kind == "conv4":
        shape = getattr(tasks, "input_shape", None)
        if shape is None:
            raise ValueError(f"model 'conv4' needs image tasks, but {cfg.task.family!r} tasks are not images")
        return Conv4(shape[0], cfg.model.conv_channels, tasks.output_size if head else None, resolve_norm(cfg),
                     shape[1:],
                     channels_last=cfg.method.name not in GRADIENT_BASED and not _finetunes_encoder(cfg),
                     pooling=cfg.model.pooling)
    if kind == "pixels":
        if head or cfg.method.name not in PIXEL_INPUT:
            raise ValueError(f"model 'pixels' (no network: raw pixels) serves {sorted(PIXEL_INPUT)} only")
        return nn.Flatten()
    raise ValueError(f"unknown model {cfg.model.name!r}; choose 'mlp', 'conv4', 'supernet', 'darts', 'pixels' "
                     "or 'auto'")


def search_space(cfg: Config) -> SearchSpace:
    """The DARTS macro-architecture and candidate operations the model settings describe."""
    m = cfg.model
    return SearchSpace(cells=m.cells, nodes=m.nodes, channels=m.cell_channels, stem_multiplier=m.stem_multiplier,
                       operations=tuple(m.operations),
                       reduction_cells=None if m.reduction_cells is None else tuple(m.reduction_cells))


def load_architecture(source: str) -> Genotype:
    """A genotype from a JSON file, or from a metanas / tnas run directory's architecture.json."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / ARCHITECTURE_FILE
        if not path.exists():
            raise FileNotFoundError(f"architecture: {path} does not exist; a metanas / tnas run writes it when "
                                    f"training ends, and `fastadapt plot {source}` writes it for any such run")
    return Genotype.load(path)


def _darts_network(cfg: Config, tasks: TaskDistribution, kind: str, head: bool) -> nn.Module:
    """The supernet (metanas, tnas) or model 'darts': the discrete network of ``architecture``."""
    shape = getattr(tasks, "input_shape", None)
    if shape is None:
        raise ValueError(f"model {kind!r} needs image tasks, but {cfg.task.family!r} tasks are not images")
    space, classes = search_space(cfg), tasks.output_size if head else None
    if kind == "supernet":
        if cfg.method.name not in ARCHITECTURE_SEARCH:
            raise ValueError(f"model 'supernet' is searched by {sorted(ARCHITECTURE_SEARCH)}; to train a found "
                             "architecture use --model darts --architecture PATH")
        return SearchNetwork(space, shape[0], classes, resolve_norm(cfg))
    if cfg.model.architecture is None:
        raise ValueError("model 'darts' needs --architecture: a genotype JSON file or a metanas / tnas run directory")
    return DiscreteNetwork(load_architecture(cfg.model.architecture), space, shape[0], classes, resolve_norm(cfg))


def _finetunes_encoder(cfg: Config) -> bool:
    """Whether the method fine-tunes a copy of the encoder per task, under vmap (which needs NCHW tensors)."""
    return cfg.method.name in MINIBATCH_TRAINED and cfg.method.finetune == "all"


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
        if issubclass(cls, ArchitectureLearning):
            options.update(alpha_inner_lr=method.alpha_inner_lr, warmup_iterations=method.warmup_iterations,
                           temperature_start=method.temperature_start, temperature_end=method.temperature_end)
        if cls is algorithms.MetaNAS:
            options["outer"] = method.outer_update
        options.update(fixed)
        return cls(build_model(cfg, tasks), tasks.loss, **options)

    return build


def _classifier(
    build: Callable[[Config, EpisodeTasks], MetaLearner]
) -> Callable[[Config, TaskDistribution], MetaLearner]:
    def checked(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
        if getattr(tasks, "input_shape", None) is None:
            raise ValueError(f"algorithm {cfg.method.name!r} classifies images: use tasks 'omniglot' or 'folder', "
                             f"not {cfg.task.family!r}")
        return build(cfg, tasks)

    return checked


def _trpo(cfg: Config) -> TRPOSettings:
    method = cfg.method
    return TRPOSettings(max_kl=method.max_kl, cg_iterations=method.cg_iterations, cg_damping=method.cg_damping,
                        backtrack_ratio=method.backtrack_ratio, line_search_steps=method.line_search_steps,
                        curvature_fraction=method.curvature_fraction)


def _policy_gradient(cls: type[algorithms.MAMLRL]) -> Callable[[Config, MDPTaskDistribution], RLMetaLearner]:
    """MAML-RL, Meta-SGD-RL and the pretrained baseline: a feed-forward policy, adapted by policy-gradient steps."""

    def build(cfg: Config, tasks: MDPTaskDistribution) -> RLMetaLearner:
        method = cfg.method
        options = dict(inner_lr=method.inner_lr, trajectories=cfg.task.trajectories, first_order=method.first_order,
                       gamma=method.gamma, gae_lambda=1.0 if method.gae_lambda is None else method.gae_lambda,
                       trpo=_trpo(cfg), eval_inner_lrs=method.eval_inner_lrs or None)
        if cls.min_inner_steps > 0:
            options["inner_steps"] = method.inner_steps
        return cls(build_model(cfg, tasks), **options)

    return build


def _rl2(cfg: Config, tasks: MDPTaskDistribution) -> RLMetaLearner:
    method = cfg.method
    return algorithms.RL2(build_model(cfg, tasks), trials=cfg.task.trajectories, gamma=method.gamma,
                          gae_lambda=0.3 if method.gae_lambda is None else method.gae_lambda, clip=method.ppo_clip,
                          epochs=method.ppo_epochs, minibatches=method.ppo_minibatches, value_coef=method.value_coef,
                          entropy_coef=method.entropy_coef, max_grad_norm=method.max_grad_norm)


def _bandit_algorithm(cfg: Config, tasks: MDPTaskDistribution) -> RLMetaLearner:
    if cfg.method.name == "ucb1":
        return algorithms.UCB1(cfg.method.ucb_exploration)
    return {"random-arms": algorithms.RandomArms, "thompson": algorithms.ThompsonSampling,
            "bayes-optimal": algorithms.BayesOptimal}[cfg.method.name]()


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


def _transfer(cls: type[algorithms.Baseline]) -> Callable[[Config, ClassMiniBatches], MetaLearner]:
    """Baseline, Baseline++ or embedding + logistic regression: an encoder and a head over all training classes."""
    def build(cfg: Config, tasks: ClassMiniBatches) -> MetaLearner:
        encoder, width = _encoder(cfg, tasks)
        method = cfg.method
        if cls is algorithms.EmbeddingLogisticRegression:
            if method.finetune != "head":
                raise ValueError("logreg fits a logistic regression on frozen features: finetune 'all' is for "
                                 "baseline and baseline++")
            return cls(encoder, width, tasks.output_size)
        options = dict(finetune=method.finetune, finetune_steps=method.finetune_steps, finetune_lr=method.finetune_lr)
        if cls is algorithms.BaselinePlusPlus and method.cosine_scale is not None:
            options["scale"] = method.cosine_scale
        return cls(encoder, width, tasks.output_size, **options)

    return build


ALGORITHMS: dict[str, Callable[[Config, TaskDistribution], MetaLearner]] = {
    "maml": _gradient_based(algorithms.MAML),
    "fomaml": _gradient_based(algorithms.MAML, first_order=True),
    "metasgd": _gradient_based(algorithms.MetaSGD),
    "reptile": _gradient_based(algorithms.Reptile),
    "pretrained": _gradient_based(algorithms.Pretrained),
    "metanas": _gradient_based(algorithms.MetaNAS),
    "tnas": _gradient_based(algorithms.TNAS),
    "protonet": _classifier(_protonet),
    "matching": _classifier(_matching),
    "knn": _classifier(_knn),
    "mann": _classifier(_mann),
    "snail": _classifier(_snail),
    "metanet": _classifier(_metanet),
    "baseline": _classifier(_transfer(algorithms.Baseline)),
    "baseline++": _classifier(_transfer(algorithms.BaselinePlusPlus)),
    "logreg": _classifier(_transfer(algorithms.EmbeddingLogisticRegression)),
    "maml-rl": _policy_gradient(algorithms.MAMLRL),
    "metasgd-rl": _policy_gradient(algorithms.MetaSGDRL),
    "pretrained-rl": _policy_gradient(algorithms.PretrainedPolicy),
    "rl2": _rl2,
    "random-arms": _bandit_algorithm,
    "ucb1": _bandit_algorithm,
    "thompson": _bandit_algorithm,
    "bayes-optimal": _bandit_algorithm,
}
#: Methods trained as one classifier over all training classes, on mini-batches (tasks.ClassMiniBatches).
MINIBATCH_TRAINED = frozenset({"baseline", "baseline++", "logreg"})
#: Methods for the MDP families: they act in environments instead of reading support sets.
#: RL methods that adapt a feed-forward policy by policy-gradient steps (evaluated after 0..3 steps).
POLICY_GRADIENT_ADAPTED = frozenset({"maml-rl", "metasgd-rl", "pretrained-rl"})
RL_METHODS = POLICY_GRADIENT_ADAPTED | frozenset({"rl2", "random-arms", "ucb1", "thompson", "bayes-optimal"})
#: RL methods whose meta-batch splits over processes (--nproc): TRPO averages its gradient, Fisher-vector
#: products and line-search values over them. RL^2's PPO normalises advantages and draws minibatches over
#: the whole batch, so it runs in one process.
RL_METHODS_SPLIT_OVER_PROCESSES = POLICY_GRADIENT_ADAPTED
#: Hand-designed bandit algorithms: nothing to train, bandit tasks only.
BANDIT_ALGORITHMS = frozenset({"random-arms", "ucb1", "thompson", "bayes-optimal"})
POLICIES = ("auto", "gaussian", "categorical", "gru")
#: Methods that may read raw pixels instead of an embedding (model "pixels").
PIXEL_INPUT = frozenset({"knn", "mann"})
GRADIENT_BASED = frozenset({"maml", "fomaml", "metasgd", "reptile", "pretrained", "metanas", "tnas"})
#: Methods that search an architecture (a DARTS supernet's alphas) along with the weights.
ARCHITECTURE_SEARCH = frozenset({"metanas", "tnas"})
#: Methods that compare queries with the support set, so one trained model serves any number of ways and shots.
ANY_WAY = frozenset({"protonet", "matching", "knn"}) | MINIBATCH_TRAINED
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
    """'auto' is CUDA when available, else the CPU; a device that does not exist here is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this PyTorch build or machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: fastadapt runs on cpu or cuda")
    return device


def resolve_model(cfg: Config) -> str:
    """The network's name, with 'auto' resolved: the DARTS supernet for an architecture search, the MLP for
    sinusoid regression and for RL policies (whose kind is ``model.policy``), Conv-4 for images."""
    if cfg.model.name != "auto":
        return cfg.model.name
    if cfg.method.name in ARCHITECTURE_SEARCH:
        return "supernet"
    return "mlp" if cfg.task.family in ("sinusoid", *RL_FAMILIES) else "conv4"


MODELS = ("auto", "mlp", "conv4", "pixels", "supernet", "darts")
META_OPTIMIZERS = ("adam", "sgd")


def _check_name(flag: str, value: str, choices: Iterable[str]) -> None:
    choices = sorted(choices)
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        raise ValueError(f"unknown {flag.lstrip('-').replace('-', ' ')} {value!r} ({flag})"
                         + (f": did you mean {close[0]!r}?" if close else "") + f" Choose one of {choices}")


def check_config(cfg: Config) -> None:
    """Check every setting of a run before it starts: names first (so a typo is reported as one), then
    combinations, then sizes against the data, for training, validation and every evaluation setting."""
    _check_name("--algorithm", cfg.method.name, ALGORITHMS)
    _check_name("--tasks", cfg.task.family, {**TASK_FAMILIES, **DATASETS})
    _check_name("--model", cfg.model.name, MODELS)
    _check_name("--norm", cfg.model.norm, ("auto", *NORMS))
    _check_name("--meta-optimizer", cfg.training.meta_optimizer, META_OPTIMIZERS)
    _check_name("--precision", cfg.training.precision, PRECISIONS)
    if cfg.task.family == "omniglot":
        _check_name("--dataset-split", cfg.task.dataset_split, OMNIGLOT_SPLITS)
    resolve_device(cfg.training.device)
    if cfg.task.family in RL_FAMILIES or cfg.method.name in RL_METHODS:
        check_rl_config(cfg)
        return
    norm, method = resolve_norm(cfg), cfg.method.name
    if resolve_model(cfg) == "conv4" and method in GRADIENT_BASED and norm == "batch":
        raise ValueError(f"--norm batch does not work with {method}: its inner loop adapts every task in one "
                         "vmapped call, which cannot update running statistics; use --norm transductive "
                         "(the MAML paper's) or layer")
    if resolve_model(cfg) == "conv4" and method not in GRADIENT_BASED and norm == "transductive":
        raise ValueError(f"--norm transductive does not work with {method}: it embeds many episodes in one call, "
                         "so batch statistics would mix episodes and a test episode would depend on others; "
                         "use --norm batch or layer")
    if resolve_model(cfg) == "pixels" and method not in PIXEL_INPUT:
        raise ValueError(f"model 'pixels' (no network: raw pixels) serves {sorted(PIXEL_INPUT)} only, not {method}")
    if cfg.task.family in DATASETS:
        if cfg.method.name in MINIBATCH_TRAINED:  # trained on mini-batches: a training episode is never drawn
            class_dataset(cfg, "train")
        else:
            episodes(cfg, "train", cfg.task.n_way, cfg.task.k_shot)
        for split in ("val", "test"):
            for way, shot in eval_settings(cfg) if split == "test" else eval_settings(cfg)[:1]:
                episodes(cfg, split, way, shot)


def check_rl_config(cfg: Config) -> None:
    """Reinforcement-learning runs: an RL method on an MDP family, with a policy that can act there."""
    family, method = cfg.task.family, cfg.method.name
    if family not in RL_FAMILIES:
        raise ValueError(f"{method} learns in MDPs: use --tasks {' / '.join(RL_FAMILIES)}, not {family!r}")
    if cfg.training.precision != "fp32" or cfg.training.tasks_per_pass is not None:
        raise ValueError(f"{method}: --precision bf16 and --tasks-per-pass are for image and regression networks; "
                         "an RL policy is a small network stepped with its simulator, and runs in fp32 in one pass")
    if method not in RL_METHODS:
        raise ValueError(f"--tasks {family} is a reinforcement-learning family: use --algorithm "
                         f"{' / '.join(sorted(RL_METHODS))}, not {method!r}")
    if method in BANDIT_ALGORITHMS:
        if family != "bandit":
            raise ValueError(f"{method} is a bandit algorithm: use --tasks bandit, not {family!r}")
        if cfg.training.iterations > 0:
            raise ValueError(f"{method} is a fixed bandit algorithm with nothing to train: run it with --iterations 0 "
                             "to evaluate it")
        return
    if resolve_model(cfg) != "mlp":
        raise ValueError(f"--model {cfg.model.name} is for images; an RL policy's network is set by --policy "
                         "and --hidden-sizes / --recurrent-size")
    _check_name("--policy", cfg.model.policy, POLICIES)
    tasks = build_tasks(cfg, "train")
    policy = resolve_policy(cfg, tasks)
    if (method == "rl2") != (policy == "gru"):
        raise ValueError("rl2 needs --policy gru (its hidden state is what adapts)" if method == "rl2" else
                         f"{method} adapts a feed-forward policy by gradient steps: use --policy gaussian or "
                         "categorical, not gru")
    build_policy(cfg, tasks)  # a policy that cannot act in these tasks is refused here, before training
