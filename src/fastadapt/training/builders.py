"""Turn a ``Config`` into the objects of a run: task distributions, model, learner.

What a method is and what a task family is come from their specifications (``algorithms.registry``,
``training.families``); this module puts a run together from them, so the CLI and the Python API accept the
same names and build the same objects.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.registry import method_names, method_spec, methods
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.datasets import ClassDataset
from fastadapt.models import MLP, CategoricalMLPPolicy, Conv4, GaussianMLPPolicy, RecurrentPolicy
from fastadapt.models.conv4 import NORMS
from fastadapt.tasks import ClassMiniBatches, EpisodeTasks
from fastadapt.models.darts import DiscreteNetwork, Genotype, SearchNetwork, SearchSpace
from fastadapt.tasks.base import TaskDistribution
from fastadapt.tasks.mdp import MDPTaskDistribution
from fastadapt.training.config import Config
from fastadapt.training.precision import PRECISIONS
from fastadapt.training.families import FAMILIES, FamilySpec, check_name, describe_split, family_names

#: Queries per class in training episodes when the config leaves num_query unset.
DEFAULT_TRAIN_QUERY = 15
#: The file in a metanas / tnas run directory that holds its meta-architecture (of the best checkpoint).
ARCHITECTURE_FILE = "architecture.json"


def build_tasks(cfg: Config, split: str = "train") -> TaskDistribution:
    """Training tasks (``split`` "train") or the validation / test tasks of the run's main setting."""
    family = family_of(cfg)
    if cfg.task.balanced_directions and not family.balanced_directions:
        raise ValueError(f"balanced directions are for the forward/backward families, not {cfg.task.family}")
    if family.kind != "images":
        return family.build(cfg, split)
    if split == "train" and method_of(cfg).minibatch_trained:
        return ClassMiniBatches(class_dataset(cfg, "train"))
    way, shot = (cfg.task.n_way, cfg.task.k_shot) if split == "train" else eval_settings(cfg)[0]
    return episodes(cfg, split, way, shot)


def family_of(cfg: Config) -> FamilySpec:
    """The specification of the run's task family."""
    if cfg.task.family not in FAMILIES:
        raise ValueError(f"unknown task family {cfg.task.family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[cfg.task.family]


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
    return "transductive" if method_of(cfg).gradient_based else "batch"


def resolve_policy(cfg: Config, tasks: MDPTaskDistribution) -> str:
    """The policy's kind, with 'auto' resolved: RL^2's GRU, else by the task's actions."""
    if cfg.model.policy != "auto":
        return cfg.model.policy
    if method_of(cfg).policy == "gru":
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
    if family_of(cfg).kind == "mdp":
        return build_policy(cfg, tasks)
    kind = resolve_model(cfg)
    if method_of(cfg).searches_architecture and kind != "supernet":
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
                     channels_last=not method_of(cfg).gradient_based and not _finetunes_encoder(cfg),
                     pooling=cfg.model.pooling)
    if kind == "pixels":
        if head or not method_of(cfg).pixel_input:
            raise ValueError(f"model 'pixels' (no network: raw pixels) serves {method_names(pixel_input=True)} only")
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
        if not method_of(cfg).searches_architecture:
            raise ValueError(f"model 'supernet' is searched by {method_names(searches_architecture=True)}; to train "
                             "a found architecture use --model darts --architecture PATH")
        return SearchNetwork(space, shape[0], classes, resolve_norm(cfg))
    if cfg.model.architecture is None:
        raise ValueError("model 'darts' needs --architecture: a genotype JSON file or a metanas / tnas run directory")
    return DiscreteNetwork(load_architecture(cfg.model.architecture), space, shape[0], classes, resolve_norm(cfg))


def _finetunes_encoder(cfg: Config) -> bool:
    """Whether the method fine-tunes a copy of the encoder per task, under vmap (which needs NCHW tensors)."""
    return method_of(cfg).minibatch_trained and cfg.method.finetune == "all"


def _encoder(cfg: Config, tasks: TaskDistribution) -> tuple[nn.Module, int]:
    """The model without a head and the width of its features."""
    encoder = build_model(cfg, tasks, head=False)
    with torch.no_grad():
        width = encoder.eval()(torch.zeros(2, *tasks.input_shape)).flatten(1).shape[1]
    return encoder.train(), width


# --- algorithms ---
class BuildContext:
    """What a method's ``build`` (its ``MethodSpec``) is given: the run's settings, its training tasks, and the
    networks those settings describe."""

    def __init__(self, cfg: Config, tasks: TaskDistribution) -> None:
        self.cfg, self.tasks = cfg, tasks

    def model(self, head: bool = True) -> nn.Module:
        """The network (an RL family's policy); with ``head`` it outputs what the tasks need."""
        return build_model(self.cfg, self.tasks, head)

    def encoder(self) -> tuple[nn.Module, int]:
        """The model without a head and the width of its features."""
        return _encoder(self.cfg, self.tasks)

    @staticmethod
    def trained_learner(run_dir: str) -> nn.Module:
        """The best learner of the run in ``run_dir`` (k-NN borrows its encoder)."""
        from fastadapt.training.runs import load_run  # runs builds on this module; import when needed

        return load_run(run_dir)[1]


def method_of(cfg: Config) -> MethodSpec:
    """The specification of the run's method."""
    return method_spec(cfg.method.name)


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


def build_learner(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
    method = method_of(cfg)
    if method.images_only and getattr(tasks, "input_shape", None) is None:
        raise ValueError(f"algorithm {cfg.method.name!r} classifies images: use tasks 'omniglot' or 'folder', "
                         f"not {cfg.task.family!r}")
    torch.manual_seed(cfg.training.seed)
    return method.build(BuildContext(cfg, tasks))


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
    if method_of(cfg).searches_architecture:
        return "supernet"
    return "conv4" if family_of(cfg).kind == "images" else "mlp"


MODELS = ("auto", "mlp", "conv4", "pixels", "supernet", "darts")
POLICIES = ("auto", "gaussian", "categorical", "gru")
META_OPTIMIZERS = ("adam", "sgd")


def check_config(cfg: Config) -> None:
    """Check every setting of a run before it starts: names first (so a typo is reported as one), then
    combinations, then sizes against the data, for training, validation and every evaluation setting."""
    check_name("--algorithm", cfg.method.name, methods())
    check_name("--tasks", cfg.task.family, FAMILIES)
    check_name("--model", cfg.model.name, MODELS)
    check_name("--norm", cfg.model.norm, ("auto", *NORMS))
    check_name("--meta-optimizer", cfg.training.meta_optimizer, META_OPTIMIZERS)
    check_name("--precision", cfg.training.precision, PRECISIONS)
    family_of(cfg).check(cfg)
    resolve_device(cfg.training.device)
    if family_of(cfg).kind == "mdp" or method_of(cfg).rl:
        check_rl_config(cfg)
        return
    norm, method, spec = resolve_norm(cfg), cfg.method.name, method_of(cfg)
    if resolve_model(cfg) == "conv4" and spec.gradient_based and norm == "batch":
        raise ValueError(f"--norm batch does not work with {method}: its inner loop adapts every task in one "
                         "vmapped call, which cannot update running statistics; use --norm transductive "
                         "(the MAML paper's) or layer")
    if resolve_model(cfg) == "conv4" and not spec.gradient_based and norm == "transductive":
        raise ValueError(f"--norm transductive does not work with {method}: it embeds many episodes in one call, "
                         "so batch statistics would mix episodes and a test episode would depend on others; "
                         "use --norm batch or layer")
    if resolve_model(cfg) == "pixels" and not spec.pixel_input:
        raise ValueError(f"model 'pixels' (no network: raw pixels) serves {method_names(pixel_input=True)} only, "
                         f"not {method}")
    if family_of(cfg).kind == "images":
        if spec.minibatch_trained:  # trained on mini-batches: a training episode is never drawn
            class_dataset(cfg, "train")
        else:
            episodes(cfg, "train", cfg.task.n_way, cfg.task.k_shot)
        for split in ("val", "test"):
            for way, shot in eval_settings(cfg) if split == "test" else eval_settings(cfg)[:1]:
                episodes(cfg, split, way, shot)


def check_rl_config(cfg: Config) -> None:
    """Reinforcement-learning runs: an RL method on an MDP family, with a policy that can act there."""
    family, method, spec = cfg.task.family, cfg.method.name, method_of(cfg)
    if family_of(cfg).kind != "mdp":
        raise ValueError(f"{method} learns in MDPs: use --tasks {' / '.join(family_names('mdp'))}, not {family!r}")
    if cfg.training.precision != "fp32" or cfg.training.tasks_per_pass is not None:
        raise ValueError(f"{method}: --precision bf16 and --tasks-per-pass are for image and regression networks; "
                         "an RL policy is a small network stepped with its simulator, and runs in fp32 in one pass")
    if not spec.rl:
        raise ValueError(f"--tasks {family} is a reinforcement-learning family: use --algorithm "
                         f"{' / '.join(method_names(rl=True))}, not {method!r}")
    if spec.bandit:
        if family != "bandit":
            raise ValueError(f"{method} is a bandit algorithm: use --tasks bandit, not {family!r}")
        if cfg.training.iterations > 0:
            raise ValueError(f"{method} is a fixed bandit algorithm with nothing to train: run it with --iterations 0 "
                             "to evaluate it")
        return
    if resolve_model(cfg) != "mlp":
        raise ValueError(f"--model {cfg.model.name} is for images; an RL policy's network is set by --policy "
                         "and --hidden-sizes / --recurrent-size")
    check_name("--policy", cfg.model.policy, POLICIES)
    tasks = build_tasks(cfg, "train")
    policy = resolve_policy(cfg, tasks)
    if (spec.policy == "gru") != (policy == "gru"):
        raise ValueError(f"{method} needs --policy gru (its hidden state is what adapts)" if spec.policy == "gru" else
                         f"{method} adapts a feed-forward policy by gradient steps: use --policy gaussian or "
                         "categorical, not gru")
    build_policy(cfg, tasks)  # a policy that cannot act in these tasks is refused here, before training
