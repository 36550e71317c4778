"""Prototypical Networks (Snell, Swersky and Zemel, 2017).

An encoder f_phi embeds every image. The prototype of class k in a task is the
mean embedding of its support examples S_k,

    c_k = 1/|S_k| sum_{(x_i, y_i) in S_k} f_phi(x_i),

and a query x is classified by a softmax over negative distances to them,

    p_phi(y = k | x) = exp(-d(f_phi(x), c_k)) / sum_k' exp(-d(f_phi(x), c_k')),

with d the squared Euclidean distance (the paper's choice: it makes the model a
linear classifier in embedding space). The meta-loss is the query negative
log-likelihood; ``adapt`` computes the prototypes, without gradient steps.
With ``distance="cosine"`` the logits are s * cos(f_phi(x), c_k), where the
learned scale s (10 at first) lets the softmax sharpen, which bounded cosines
alone cannot. With ``support_views`` V > 1 an evaluated (not training) prototype
averages the embeddings of each support image and V - 1 copies of it distorted by
``tasks.episodes.random_affine`` (test-time augmentation: a one-shot prototype is one
drawing, and the copies stand in for other people's drawings of it); the copies are the
same for the same support set, drawn from a generator seeded by SUPPORT_VIEWS_SEED.

This module also holds ``MetricLearner``, the shared skeleton of the learners
that classify by comparing query embeddings with support embeddings (this one,
Matching Networks, nearest neighbours): labels are checked once, and
``meta_loss`` embeds a whole meta-batch, support and query, in one encoder call.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.base import MetaLearner, check_labels, check_no_steps, embed_images, in_fp32
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.options import POSITIVE_INT, Options, setting
from fastadapt.tasks.base import TaskBatch
from fastadapt.tasks.episodes import random_affine

DISTANCES = ("squared_euclidean", "cosine")
#: Seed of the distortions of ``support_views``: every evaluation of a support set sees the same copies.
SUPPORT_VIEWS_SEED = 0


class EmbeddedSupport(NamedTuple):
    """A support set as metric learners keep it: embeddings (tasks, examples, D), one-hot labels
    (tasks, examples, N)."""

    features: torch.Tensor
    one_hot: torch.Tensor


def support_one_hot(support_x: torch.Tensor, support_y: torch.Tensor, method: str) -> torch.Tensor:
    """One-hot support labels (tasks, examples, n_way), with n_way = the largest label + 1.

    Every task must have at least one support example of every class 0..n_way-1:
    an empty class would have no prototype (and no neighbour to vote for it).
    """
    n_way = int(support_y.max()) + 1 if support_y.numel() else 1
    check_labels(support_x, support_y, max(n_way, 1), method)
    one_hot = F.one_hot(support_y, n_way).to(support_x.dtype)
    empty = (one_hot.sum(1) == 0).nonzero()
    if len(empty):
        task, label = empty[0].tolist()
        raise ValueError(
            f"{method}: task {task} has no support example of class {label}; support_y must use every label "
            f"0..{n_way - 1} in every task"
        )
    return one_hot


def check_pair(queries: torch.Tensor, support: torch.Tensor) -> None:
    """Embeddings must be (tasks, queries, D) and (tasks, examples, D) with the same tasks and D."""
    if not (queries.dim() == support.dim() == 3 and queries.shape[0] == support.shape[0]
            and queries.shape[2] == support.shape[2]):
        raise ValueError(
            f"query embeddings {tuple(queries.shape)} and support embeddings {tuple(support.shape)} must be "
            "(tasks, queries, D) and (tasks, examples, D) with the same tasks and D"
        )


@in_fp32
def squared_distances(queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """||q - s||^2 for every pair: (tasks, Q, D), (tasks, S, D) -> (tasks, Q, S).

    Expanded as |q|^2 + |s|^2 - 2 q.s, so memory stays at (tasks, Q, S) rather than (tasks, Q, S, D).
    """
    check_pair(queries, support)
    norms = queries.pow(2).sum(-1, keepdim=True) + support.pow(2).sum(-1).unsqueeze(1)
    return torch.baddbmm(norms, queries, support.transpose(1, 2), alpha=-2).clamp_min(0)


@in_fp32
def cosine_similarities(queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """cos(q, s) for every pair: (tasks, Q, D), (tasks, S, D) -> (tasks, Q, S)."""
    check_pair(queries, support)
    return F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)


@in_fp32
def prototypes(support: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """Mean embedding of each class: support (tasks, examples, D), one-hot labels (tasks, examples, N) ->
    (tasks, N, D)."""
    return (one_hot.transpose(1, 2) @ support) / one_hot.sum(1).unsqueeze(-1)


class MetricLearner(MetaLearner):
    """Embed, then compare: subclasses say what they keep of an embedded support set and how they score queries."""

    def __init__(self, encoder: nn.Module, loss: str = "cross_entropy") -> None:
        if loss != "cross_entropy":
            raise ValueError(f"{type(self).__name__} classifies: loss must be 'cross_entropy', got {loss!r}")
        super().__init__(loss)
        self.encoder = encoder

    def adapt_embedded(self, support: torch.Tensor, one_hot: torch.Tensor) -> Any:
        raise NotImplementedError

    def predict_embedded(self, adapted: Any, queries: torch.Tensor) -> torch.Tensor:
        """Scores (tasks, queries, classes) for query embeddings (tasks, queries, D)."""
        raise NotImplementedError

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        name = type(self).__name__
        check_no_steps(steps, name)
        one_hot = support_one_hot(support_x, support_y, name)
        return self.adapt_embedded(embed_images(self.encoder, support_x, name), one_hot)

    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        if query_x.dim() < 3:
            raise ValueError(
                f"{type(self).__name__}: query_x {tuple(query_x.shape)} must be (tasks, queries, *features)"
            )
        return self.predict_embedded(adapted, embed_images(self.encoder, query_x, type(self).__name__))

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Query NLL, with support and query of every task embedded in a single encoder call."""
        name = type(self).__name__
        one_hot = support_one_hot(tasks.support_x, tasks.support_y, name)
        check_labels(tasks.query_x, tasks.query_y, one_hot.shape[-1], name, "query_x", "query_y")
        features = embed_images(self.encoder, torch.cat([tasks.support_x, tasks.query_x], 1), name)
        support = tasks.support_x.shape[1]
        outputs = self.predict_embedded(self.adapt_embedded(features[:, :support], one_hot), features[:, support:])
        loss = self.task_losses(outputs, tasks.query_y).mean()
        return loss, self.metrics(outputs, tasks.query_y, loss)


class PrototypicalNetworks(MetricLearner):
    def __init__(self, encoder: nn.Module, loss: str = "cross_entropy", distance: str = "squared_euclidean",
                 support_views: int = 1) -> None:
        super().__init__(encoder, loss)
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
        if isinstance(support_views, bool) or not isinstance(support_views, int) or support_views < 1:
            raise ValueError(f"support_views must be a positive int, got {support_views!r}")
        self.distance, self.support_views = distance, support_views
        self.scale = nn.Parameter(torch.tensor(10.0)) if distance == "cosine" else None

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Prototypes of the support set; in evaluation with ``support_views`` > 1, of it and its distorted copies."""
        if self.training or self.support_views == 1:
            return super().adapt(support_x, support_y, steps)
        if support_x.dim() != 5:
            raise ValueError(f"support_views distorts images: support_x {tuple(support_x.shape)} must be "
                             "(tasks, examples, C, H, W)")
        generator = torch.Generator().manual_seed(SUPPORT_VIEWS_SEED)
        copies = [random_affine(support_x.cpu(), generator).to(support_x.device) for _ in range(self.support_views - 1)]
        return super().adapt(torch.cat([support_x, *copies], 1), support_y.repeat(1, self.support_views), steps)

    def adapt_embedded(self, support: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """Prototypes c_k (tasks, classes, D): per-class sums of embeddings divided by class counts (in fp32)."""
        return prototypes(support, one_hot)

    def predict_embedded(self, adapted: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":
            return self.scale * cosine_similarities(queries, adapted)
        return -squared_distances(queries, adapted)


@dataclass(frozen=True)
class SupportViewsOptions(Options):
    """Prototypical Networks' test-time augmentation."""

    support_views: int = setting(1, "ProtoNet, at evaluation: each prototype averages the support image and "
                                    "support_views - 1 copies of it distorted as --augment distorts training "
                                    "images (test-time augmentation; 1: the image alone)", rule=POSITIVE_INT)


def _build(context) -> PrototypicalNetworks:
    return PrototypicalNetworks(context.encoder()[0], support_views=context.cfg.method.support_views)


SPECS = (MethodSpec("protonet", PrototypicalNetworks, _build, (SupportViewsOptions,), any_way=True, images_only=True),)
