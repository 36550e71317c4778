"""The candidate operations on the edges of a DARTS cell (Liu, Simonyan and Yang, 2019).

Every operation maps ``channels`` to ``channels`` feature maps; with ``stride`` 2 (edges leaving a
reduction cell's inputs) it halves height and width, rounding up, so odd sizes (7x7) work too.
Convolutions are ReLU -> convolution -> normalisation, as in DARTS. Normalisation follows the
Conv-4's policy (``models.conv4``): 'transductive' (batch statistics, exact under torch.func.vmap to
second order), 'layer' or 'batch'; a convolution feeding a batch-statistics norm has no bias.

'zero' has no module: a mixed edge leaves it out of its weighted sum, so its architecture weight
only takes softmax mass away from the other operations, and discretisation never picks it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.models.conv4 import _norm_layer

#: Every operation the search space knows, in the DARTS paper's order (plus a plain 3x3 convolution,
#: which MetaNAS adds for few-shot learning).
OPERATIONS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "conv_3x3", "max_pool_3x3", "avg_pool_3x3",
              "skip_connect", "zero")
ZERO = "zero"


def _conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int, norm: str,
          dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=norm == "layer")


class ReLUConvNorm(nn.Sequential):
    """ReLU, a k x k convolution, normalisation: DARTS's 'conv' and the cells' input preprocessing (1x1)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str) -> None:
        super().__init__(nn.ReLU(), _conv(c_in, c_out, kernel, stride, kernel // 2, norm), _norm_layer(norm, c_out))


class DilatedConv(nn.Sequential):
    """ReLU, a depthwise k x k convolution (dilated by ``dilation``), a pointwise 1x1 convolution, normalisation."""

    def __init__(self, channels: int, kernel: int, stride: int, dilation: int, norm: str) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(),
            _conv(channels, channels, kernel, stride, padding, norm, dilation=dilation, groups=channels),
            _conv(channels, channels, 1, 1, 0, norm),
            _norm_layer(norm, channels),
        )


class SeparableConv(nn.Sequential):
    """Two undilated depthwise-separable blocks, the first with the stride (DARTS's 'sep_conv')."""

    def __init__(self, channels: int, kernel: int, stride: int, norm: str) -> None:
        super().__init__(DilatedConv(channels, kernel, stride, 1, norm), DilatedConv(channels, kernel, 1, 1, norm))


class FactorizedReduce(nn.Module):
    """Halves height and width without discarding pixels: two 1x1 convolutions at stride 2, the second on the
    image shifted by one pixel, concatenated. The shifted path is zero-padded so odd sizes round up.

    The stride is taken by subsampling before a stride-1 convolution, which computes the same: the backward
    pass of a strided 1x1 convolution on channels-last tensors with a few channels corrupts the heap in
    torch 2.13's oneDNN kernels on CPU (MAML's per-task predictions run channels-last).
    """

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.even = _conv(c_in, c_out // 2, 1, 1, 0, norm)
        self.odd = _conv(c_in, c_out - c_out // 2, 1, 1, 0, norm)
        self.norm = _norm_layer(norm, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.norm(torch.cat([self.even(x[:, :, ::2, ::2]), self.odd(shifted[:, :, ::2, ::2])], dim=1))


def _skip(channels: int, stride: int, norm: str) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, norm)


_BUILDERS: dict[str, Callable[[int, int, str], nn.Module]] = {
    "sep_conv_3x3": lambda c, stride, norm: SeparableConv(c, 3, stride, norm),
    "sep_conv_5x5": lambda c, stride, norm: SeparableConv(c, 5, stride, norm),
    "dil_conv_3x3": lambda c, stride, norm: DilatedConv(c, 3, stride, 2, norm),
    "conv_3x3": lambda c, stride, norm: ReLUConvNorm(c, c, 3, stride, norm),
    "max_pool_3x3": lambda c, stride, norm: nn.MaxPool2d(3, stride, padding=1),
    "avg_pool_3x3": lambda c, stride, norm: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "skip_connect": _skip,
}


def build_operation(name: str, channels: int, stride: int, norm: str) -> nn.Module:
    """The module of operation ``name`` (any of ``OPERATIONS`` but 'zero')."""
    if name not in _BUILDERS:
        known = [op for op in OPERATIONS if op != ZERO]
        raise ValueError(f"operation {name!r} has no module; choose one of {known}")
    return _BUILDERS[name](channels, stride, norm)


def check_operations(operations: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A valid candidate set: known names, no repeats, at least one operation besides 'zero'."""
    operations = tuple(operations)
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; choose from {list(OPERATIONS)}")
    if len(set(operations)) != len(operations):
        raise ValueError(f"operations must not repeat, got {list(operations)}")
    if not [op for op in operations if op != ZERO]:
        raise ValueError(f"operations need at least one operation besides 'zero', got {list(operations)}")
    return operations
