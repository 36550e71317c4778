"""The network of a run, from its settings: Conv-4, the MLP, a DARTS network or an RL policy, with the choices
left to 'auto' (model, normalisation, policy) resolved by the method's and the task family's specifications."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastadapt.algorithms.registry import method_names, method_of
from fastadapt.config.families import family_of
from fastadapt.config.schema import Config
from fastadapt.models import MLP, CategoricalMLPPolicy, Conv4, GaussianMLPPolicy, RecurrentPolicy
from fastadapt.models.darts import DiscreteNetwork, Genotype, SearchNetwork, SearchSpace
from fastadapt.tasks.base import TaskDistribution
from fastadapt.tasks.mdp import MDPTaskDistribution

#: The file in a metanas / tnas run directory that holds its meta-architecture (of the best checkpoint).
ARCHITECTURE_FILE = "architecture.json"
#: "unet": the segmentation methods' own network (a segmentation family's only model)
MODELS = ("auto", "mlp", "conv4", "pixels", "supernet", "darts", "unet")
POLICIES = ("auto", "gaussian", "categorical", "gru")


def resolve_model(cfg: Config) -> str:
    """The network's name, with 'auto' resolved: the DARTS supernet for an architecture search, the MLP for
    sinusoid regression and for RL policies (whose kind is ``model.policy``), Conv-4 for images, the
    segmentation and detection methods' own network (unet) for those."""
    if cfg.model.name != "auto":
        return cfg.model.name
    if method_of(cfg).searches_architecture:
        return "supernet"
    return {"images": "conv4", "segmentation": "unet", "detection": "unet"}.get(family_of(cfg).kind, "mlp")


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


def build_encoder(cfg: Config, tasks: TaskDistribution) -> tuple[nn.Module, int]:
    """The model without a head and the width of its features."""
    encoder = build_model(cfg, tasks, head=False)
    with torch.no_grad():
        width = encoder.eval()(torch.zeros(2, *tasks.input_shape)).flatten(1).shape[1]
    return encoder.train(), width
