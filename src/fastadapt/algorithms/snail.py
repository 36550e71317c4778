"""SNAIL: a simple neural attentive meta-learner (Mishra, Rohaninejad, Chen and Abbeel, 2018).

The support set becomes a sequence of [embedding ; one-hot label] vectors, the
query is appended with an all-zero label, and a causal network of temporal
convolutions and soft attention reads the sequence and classifies its last
element. For N-way K-shot (sequence length T = NK + 1) the paper's network is

    AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128),
    TCBlock(T, 128), AttentionBlock(512, 256), 1x1 convolution to N classes

with, for inputs x of shape (sequence, channels):

    DenseBlock(d, D):  f, g = CausalConv_d(x), CausalConv_d(x)      (kernel 2, dilation d, D filters each)
                       x <- [x ; tanh(f) * sigmoid(g)]
    TCBlock(T, D):     DenseBlocks with dilations 1, 2, 4, ..., 2^(ceil(log2 T) - 1)
    AttentionBlock(K, V):
                       q, k, v = x W_q, x W_k, x W_v                  (key size K, value size V)
                       x <- [x ; softmax(mask(q k^T / sqrt(K))) v]    (mask hides the future)

Every layer is causal (convolutions are padded on the left only; attention
masks out later positions), so the output at step t depends on steps <= t.
The dilations start at 1 so that the receptive field, 2^ceil(log2 T) >= T,
covers the whole sequence (the pseudocode's 2^i from i = 1 would skip every
odd offset).

Each query is classified from [support ; that query] alone. Rather than
replicating the support sequence once per query, ``predict`` runs the network
once over the support prefix and then extends it by one step for all queries
at once: since the network is causal, the prefix's activations are the same
for every query, so this gives exactly the per-query sequences' outputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.base import MetaLearner, check_labels, check_no_steps, check_queries, embed_images
from fastadapt.algorithms.spec import MethodSpec

# Every block maps a full sequence (B, L, C) -> (B, L, C + added) with ``forward``, and with
# ``extend(prefix, last)`` also computes the outputs at one extra position after the prefix,
# for Q alternative inputs at once: last (B, Q, C), each seeing only prefix + itself.
Extended = tuple[torch.Tensor, torch.Tensor]


class DenseBlock(nn.Module):
    def __init__(self, in_channels: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.out_channels = in_channels + filters
        # The filter and gate convolutions, stacked into one.
        self.conv = nn.Conv1d(in_channels, 2 * filters, kernel_size=2, dilation=dilation)

    def _gated(self, pre_activation: torch.Tensor) -> torch.Tensor:
        f, g = pre_activation.chunk(2, dim=-1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x.transpose(1, 2), (self.dilation, 0))  # left padding only: causal
        return torch.cat([x, self._gated(self.conv(padded).transpose(1, 2))], -1)

    def extend(self, prefix: torch.Tensor, last: torch.Tensor) -> Extended:
        # The kernel's taps: weight[..., 0] sees step t - dilation, weight[..., 1] sees step t.
        weight, position = self.conv.weight, prefix.shape[1]
        pre_activation = F.linear(last, weight[..., 1], self.conv.bias)
        if position >= self.dilation:
            pre_activation = pre_activation + F.linear(prefix[:, position - self.dilation], weight[..., 0]).unsqueeze(1)
        return self(prefix), torch.cat([last, self._gated(pre_activation)], -1)


class TCBlock(nn.Module):
    def __init__(self, in_channels: int, sequence_length: int, filters: int) -> None:
        super().__init__()
        blocks = []
        for i in range(max(1, math.ceil(math.log2(sequence_length)))):
            blocks.append(DenseBlock(in_channels, 2**i, filters))
            in_channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def extend(self, prefix: torch.Tensor, last: torch.Tensor) -> Extended:
        for block in self.blocks:
            prefix, last = block.extend(prefix, last)
        return prefix, last


class AttentionBlock(nn.Module):
    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.scale = 1 / math.sqrt(key_size)
        self.out_channels = in_channels + value_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.query(x) @ self.key(x).transpose(1, 2) * self.scale
        length = x.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        weights = logits.masked_fill(future, float("-inf")).softmax(-1)
        return torch.cat([x, weights @ self.value(x)], -1)

    def extend(self, prefix: torch.Tensor, last: torch.Tensor) -> Extended:
        query = self.query(last)
        to_prefix = query @ self.key(prefix).transpose(1, 2)  # (B, Q, L)
        to_self = (query * self.key(last)).sum(-1, keepdim=True)  # (B, Q, 1)
        weights = (torch.cat([to_prefix, to_self], -1) * self.scale).softmax(-1)
        read = weights[..., :-1] @ self.value(prefix) + weights[..., -1:] * self.value(last)
        return self(prefix), torch.cat([last, read], -1)


class SNAIL(MetaLearner):
    """The paper's few-shot classification network on top of ``encoder`` (features of size ``encoder_dim``)."""

    def __init__(self, encoder: nn.Module, encoder_dim: int, n_way: int, k_shot: int) -> None:
        super().__init__("cross_entropy")
        for name, value in (("encoder_dim", encoder_dim), ("n_way", n_way), ("k_shot", k_shot)):
            if value < 1:
                raise ValueError(f"SNAIL: {name} must be a positive integer, got {value}")
        self.encoder, self.encoder_dim, self.n_way = encoder, encoder_dim, n_way
        length = n_way * k_shot + 1
        blocks: list[nn.Module] = []
        channels = encoder_dim + n_way
        for block_type, sizes in (
            (AttentionBlock, (64, 32)),
            (TCBlock, (length, 128)),
            (AttentionBlock, (256, 128)),
            (TCBlock, (length, 128)),
            (AttentionBlock, (512, 256)),
        ):
            blocks.append(block_type(channels, *sizes))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(channels, n_way)  # the 1x1 convolution

    def causal_logits(self, sequence: torch.Tensor) -> torch.Tensor:
        """The network on whole sequences: (B, L, encoder_dim + n_way) -> logits (B, L, n_way), causal in L."""
        for block in self.blocks:
            sequence = block(sequence)
        return self.classifier(sequence)

    def query_logits(self, prefix: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Logits (B, Q, n_way) of each query (B, Q, C) as the step right after ``prefix`` (B, L, C).

        Each query sees the prefix and itself, never the other queries.
        """
        for block in self.blocks:
            prefix, queries = block.extend(prefix, queries)
        return self.classifier(queries)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The support sequence of [embedding ; one-hot label] vectors, (tasks, N*K, encoder_dim + n_way)."""
        check_no_steps(steps, "SNAIL")
        check_labels(support_x, support_y, self.n_way, "SNAIL")
        features = embed_images(self.encoder, support_x, "SNAIL", self.encoder_dim)
        return torch.cat([features, F.one_hot(support_y, self.n_way).to(features.dtype)], -1)

    def predict(self, adapted: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        check_queries(query_x, adapted.shape[0], "SNAIL")
        features = embed_images(self.encoder, query_x, "SNAIL", self.encoder_dim)
        unlabelled = torch.cat([features, features.new_zeros(*features.shape[:2], self.n_way)], -1)
        return self.query_logits(adapted, unlabelled)


def _build(context) -> SNAIL:
    return SNAIL(*context.encoder(), n_way=context.cfg.task.n_way, k_shot=context.cfg.task.k_shot)


SPECS = (MethodSpec("snail", SNAIL, _build, fixed_shot=True, images_only=True),)
