"""k-nearest-neighbour classification: the baseline without meta-learning.

Each query takes the majority label of its k nearest support examples in
Euclidean distance, measured on raw pixels (``encoder=None``) or on the
embeddings of a given encoder, e.g. the encoder of a trained Prototypical
Network. Ties between classes with equally many votes go to the class whose
closest neighbour is nearest. Outputs are scores (tasks, queries, classes):
the vote count plus a tie-break bonus below 1, so argmax is the prediction;
they are not log-probabilities.

There is nothing to meta-train (a given encoder is trained elsewhere), so
``meta_loss`` raises: k-NN is for evaluation only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastadapt.algorithms.protonet import EmbeddedSupport, MetricLearner, squared_distances
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.options import POSITIVE_INT, Options, setting
from fastadapt.tasks.base import TaskBatch


class NearestNeighbours(MetricLearner):
    def __init__(self, encoder: nn.Module | None = None, k: int = 1) -> None:
        super().__init__(nn.Identity() if encoder is None else encoder)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k

    def adapt_embedded(self, support: torch.Tensor, one_hot: torch.Tensor) -> EmbeddedSupport:
        if self.k > support.shape[1]:
            raise ValueError(
                f"k={self.k} neighbours asked for, but the support set has only {support.shape[1]} examples"
            )
        return EmbeddedSupport(support, one_hot)

    def predict_embedded(self, adapted: EmbeddedSupport, queries: torch.Tensor) -> torch.Tensor:
        nearest = squared_distances(queries, adapted.features).topk(self.k, dim=-1, largest=False).indices
        tasks, num_queries, _ = nearest.shape
        one_hot = adapted.one_hot.unsqueeze(1).expand(-1, num_queries, -1, -1)
        labels = one_hot.gather(2, nearest.unsqueeze(-1).expand(-1, -1, -1, one_hot.shape[-1]))  # (T, Q, k, N)
        # The j-th nearest neighbour (j = 0..k-1) earns its class (k - j) / (k + 1) < 1: the class met first wins ties.
        rank_bonus = torch.arange(self.k, 0, -1, dtype=labels.dtype, device=labels.device) / (self.k + 1)
        return labels.sum(2) + (labels * rank_bonus[:, None]).amax(2)

    def class_probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """The share of the k neighbours' votes each class got (the tie-break bonus dropped)."""
        return outputs.floor() / self.k

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise RuntimeError(
            "NearestNeighbours has nothing to meta-train: it is evaluation-only (adapt + predict). To use a learned "
            "embedding, train an encoder with another method (e.g. PrototypicalNetworks) and pass it as encoder"
        )


@dataclass(frozen=True)
class NeighbourOptions(Options):
    """k-NN's options."""

    neighbours: int = setting(1, "k of k-NN", rule=POSITIVE_INT)
    encoder_from: str | None = setting(None, "k-NN: a run directory whose trained encoder embeds the images",
                                       weights_from=True)


def _build(context) -> NearestNeighbours:
    """k-NN on raw pixels (``model: pixels``), or in the embedding another run learned (``encoder_from``)."""
    cfg = context.cfg
    if cfg.method.encoder_from is not None:
        trained = context.trained_learner(cfg.method.encoder_from)
        if not hasattr(trained, "encoder"):
            raise ValueError(f"the run in {cfg.method.encoder_from} ({type(trained).__name__}) "
                             "has no encoder to borrow")
        return NearestNeighbours(trained.encoder.eval().requires_grad_(False), k=cfg.method.neighbours)
    if cfg.model.name != "pixels":
        raise ValueError("knn has nothing to train: use --model pixels (k-NN on raw pixels), or "
                         "--encoder-from RUN_DIR for k-NN in the embedding another run learned")
    return NearestNeighbours(None, k=cfg.method.neighbours)


SPECS = (MethodSpec("knn", NearestNeighbours, _build, (NeighbourOptions,), any_way=True, pixel_input=True,
                    images_only=True),)
