"""Meta Networks (Munkhdalai and Yu, 2017), in a compact form.

A base learner b classifies; a meta learner turns loss gradients on the
support set (the "meta information") into fast weights for b and for a
dynamic representation u, and stores b's per-example fast weights in a memory
read by attention. Here, with f(x) = encoder(x) (slow weights only):

    layer augmentation (a layer with slow weights S and fast weights S*):
        hidden layers  ReLU(S a) + ReLU(S* a)        output layer  S a + S* a   (logits stay signed)
    dynamic representation u, one augmented layer with slow Q and task-level fast Q*:
        u(x) = ReLU(Q f(x) + q) + ReLU(Q* f(x))
    task-level fast weights, from a contrastive representation loss on support pairs (x_i, x_j):
        L_ij = [y_i = y_j] |u_i - u_j|^2 + [y_i != y_j] max(0, margin - |u_i - u_j|)^2     (u with Q only)
        Q* = mean_pairs m(grad_Q L_ij)
    example-level fast weights for b = (W, V), a two-layer augmented network:
        b(x) = V h + V* h + v,   h = ReLU(W f(x) + w) + ReLU(W* f(x))
        L_i = cross_entropy(b(x_i; W, V), y_i)       (slow weights only)
        (W*_i, V*_i) = d(grad_{W,V} L_i)
    memory: keys r_i = u(x_i), values (W*_i, V*_i) for every support example
    query x: r = u(x),  a_i = softmax_i cos(r, r_i),  W* = sum_i a_i W*_i,  V* = sum_i a_i V*_i,
        output b(x; W, V, W*, V*)

m and d are the paper's fast-weight generators: small MLPs applied to each
gradient coordinate, after the gradient preprocessing of Andrychowicz et al.
(2016) that the paper uses (log-magnitude and sign, so that the MLPs see
gradients of any scale). Everything, encoder included, is meta-trained on the
query cross-entropy, second order through the gradients.

What is simplified: the paper gives every layer of its convolutional u and b
fast weights; here the encoder is shared and slow, and fast weights act on the
layers above it (one layer of u, two of b). Pairs are each support example
with the next one (x_i, x_{(i+1) mod S}) rather than sampled, so the
representation loss is deterministic and costs S per-pair gradients.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from fastadapt.algorithms.base import MetaLearner, check_labels, check_no_steps, check_queries, embed_images
from fastadapt.algorithms.spec import MethodSpec

Weights = dict[str, torch.Tensor]


class FastWeightGenerator(nn.Module):
    """m or d: gradient -> fast weight of the same shape, by one MLP shared over all coordinates."""

    def __init__(self, hidden: int, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def preprocess(self, gradient: torch.Tensor) -> torch.Tensor:
        """(log|g| / p, sign g) if |g| >= e^-p, else (-1, e^p g), with p = ``scale``: scale-free coordinates."""
        threshold = math.exp(-self.scale)
        large = gradient.abs() >= threshold
        magnitude = torch.where(large, gradient.abs().clamp_min(threshold).log() / self.scale, -1.0)
        direction = torch.where(large, gradient.sign(), gradient / threshold)
        return torch.stack([magnitude, direction], -1)

    def forward(self, gradient: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.preprocess(gradient)).squeeze(-1)


class Adapted(NamedTuple):
    """A task's fast weights: Q* for u, and the memory of b's fast weights keyed by support representations."""

    representation_fast: torch.Tensor  # Q*: (tasks, representation_dim, encoder_dim)
    keys: torch.Tensor  # (tasks, support, representation_dim)
    values: Weights  # name -> (tasks, support, *weight shape)


def read_memory(keys: torch.Tensor, values: Weights, queries: torch.Tensor) -> tuple[torch.Tensor, Weights]:
    """Attention read: a = softmax over the support of cos(query, key); returns (a (tasks, queries, support),
    {name: sum_i a_i values_i of shape (tasks, queries, *weight shape)})."""
    attention = (F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)).softmax(-1)
    return attention, {name: torch.einsum("tqs,ts...->tq...", attention, value) for name, value in values.items()}


class MetaNet(MetaLearner):
    def __init__(
        self,
        encoder: nn.Module,
        encoder_dim: int,
        n_way: int,
        representation_dim: int = 64,
        hidden_size: int = 64,
        generator_hidden: int = 20,
        margin: float = 1.0,
    ) -> None:
        super().__init__("cross_entropy")
        for name, value in (("encoder_dim", encoder_dim), ("n_way", n_way), ("representation_dim", representation_dim),
                            ("hidden_size", hidden_size), ("generator_hidden", generator_hidden)):
            if value < 1:
                raise ValueError(f"MetaNet: {name} must be a positive integer, got {value}")
        if not margin > 0:
            raise ValueError(f"MetaNet: the contrastive margin must be positive, got {margin}")
        self.encoder, self.encoder_dim, self.n_way, self.margin = encoder, encoder_dim, n_way, margin
        self.representation = nn.Linear(encoder_dim, representation_dim)  # Q, q
        self.hidden = nn.Linear(encoder_dim, hidden_size)  # W, w
        self.output = nn.Linear(hidden_size, n_way)  # V, v
        self.representation_generator = FastWeightGenerator(generator_hidden)  # m
        self.base_generator = FastWeightGenerator(generator_hidden)  # d

    # -- u and b on features (..., D); fast weights bring their own task and example dimensions --
    def _represent(
        self, features: torch.Tensor, weight: torch.Tensor, fast: torch.Tensor | None = None
    ) -> torch.Tensor:
        r = F.relu(F.linear(features, weight, self.representation.bias))
        if fast is not None:  # fast: (tasks, R, D), features: (tasks, examples, D)
            r = r + F.relu(torch.einsum("trd,ted->ter", fast, features))
        return r

    def _base(self, features: torch.Tensor, slow: Weights, fast: Weights | None = None) -> torch.Tensor:
        h = F.relu(F.linear(features, slow["hidden"], self.hidden.bias))
        if fast is not None:  # per-example fast weights: (..., H, D) and (..., N, H)
            h = h + F.relu((fast["hidden"] @ features.unsqueeze(-1)).squeeze(-1))
        logits = F.linear(h, slow["output"], self.output.bias)
        if fast is not None:
            logits = logits + (fast["output"] @ h.unsqueeze(-1)).squeeze(-1)
        return logits

    def _slow_base(self) -> Weights:
        return {"hidden": self.hidden.weight, "output": self.output.weight}

    # -- the per-pair and per-example losses whose gradients are the meta information --
    def _pair_loss(self, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        squared = (self._represent(a, weight) - self._represent(b, weight)).pow(2).sum()
        apart = F.relu(self.margin - (squared + 1e-8).sqrt()).pow(2)  # eps: sqrt's gradient is infinite at 0
        return torch.where(same, squared, apart)

    def _example_loss(self, slow: Weights, features: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._base(features, slow), label)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Adapted:
        check_no_steps(steps, "MetaNet")
        check_labels(support_x, support_y, self.n_way, "MetaNet")
        features = embed_images(self.encoder, support_x, "MetaNet", self.encoder_dim)
        tasks, support = support_y.shape

        # Task-level fast weights Q* from per-pair representation-loss gradients.
        partner_features, partner_y = features.roll(-1, dims=1), support_y.roll(-1, dims=1)
        pair_gradients = vmap(grad(self._pair_loss), in_dims=(None, 0, 0, 0))(
            self.representation.weight, features.flatten(0, 1), partner_features.flatten(0, 1),
            (support_y == partner_y).flatten(),
        )
        representation_fast = self.representation_generator(pair_gradients).view(
            tasks, support, *self.representation.weight.shape).mean(1)

        # Example-level fast weights of b from per-example task-loss gradients, stored under u's keys.
        example_gradients = vmap(grad(self._example_loss), in_dims=(None, 0, 0))(
            self._slow_base(), features.flatten(0, 1), support_y.flatten()
        )
        values = {name: self.base_generator(g).view(tasks, support, *g.shape[1:])
                  for name, g in example_gradients.items()}
        keys = self._represent(features, self.representation.weight, representation_fast)
        return Adapted(representation_fast, keys, values)

    def predict(self, adapted: Adapted, query_x: torch.Tensor) -> torch.Tensor:
        check_queries(query_x, adapted.keys.shape[0], "MetaNet")
        features = embed_images(self.encoder, query_x, "MetaNet", self.encoder_dim)
        queries = self._represent(features, self.representation.weight, adapted.representation_fast)
        _, fast = read_memory(adapted.keys, adapted.values, queries)
        return self._base(features, self._slow_base(), fast)


SPECS = (MethodSpec("metanet", MetaNet, lambda context: MetaNet(*context.encoder(), n_way=context.cfg.task.n_way),
                    images_only=True),)
