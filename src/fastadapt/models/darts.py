"""A DARTS search space (Liu, Simonyan and Yang, 2019) sized for few-shot learning, as MetaNAS and T-NAS use it.

The network is a stem convolution, a stack of cells and a linear head on globally averaged features.
A cell is a small DAG: its two inputs are the outputs of the two cells before it (1x1-convolved to the
cell's width), each of its ``nodes`` intermediate nodes sums edges from every earlier state, and its
output concatenates the nodes. A reduction cell doubles the width and halves height and width.

* ``SearchNetwork`` is the supernet: every edge is a *mixed operation*, the sum of all candidate
  operations weighted by softmax(alpha_edge / temperature), with one alpha matrix (edges x operations)
  per cell type (``alphas.normal``, ``alphas.reduce``) shared by the cells of that type. The
  temperature is a buffer that a learner anneals.
* ``discretise`` turns architecture weights into a ``Genotype``: on each edge the strongest operation
  other than 'zero', and for each node the two edges whose strongest operation weighs most.
* ``DiscreteNetwork`` is the ordinary network of a genotype. Its parameters carry the same names as the
  supernet's, so ``load_supernet_weights`` hands it the supernet's weights; with one-hot architecture
  weights the two compute the same function.

Parameters and FLOPs of any network: ``count_parameters`` and ``count_flops``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fastadapt.models.conv4 import _norm_layer
from fastadapt.models.darts_operations import (
    OPERATIONS, ZERO, FactorizedReduce, ReLUConvNorm, build_operation, check_operations,
)
from fastadapt.threads import network_built

CELL_TYPES = ("normal", "reduce")
#: Prefix of the architecture parameters in a ``SearchNetwork``'s named_parameters().
ALPHA_PREFIX = "alphas."


@dataclass(frozen=True)
class SearchSpace:
    """The macro-architecture: how many cells (and which reduce), nodes per cell, width, candidate operations.

    ``reduction_cells`` defaults to DARTS's rule, cells at 1/3 and 2/3 of the depth (cell 1 and 2 of 3).
    """

    cells: int = 3
    nodes: int = 3
    channels: int = 8
    stem_multiplier: int = 3
    operations: tuple[str, ...] = OPERATIONS
    reduction_cells: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("cells", "nodes", "stem_multiplier"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"search space: {name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.channels, int) or self.channels < 2:
            raise ValueError(f"search space: channels must be an integer >= 2, got {self.channels!r}")
        object.__setattr__(self, "operations", check_operations(self.operations))
        if self.reduction_cells is None:
            object.__setattr__(self, "reduction_cells", tuple(sorted({self.cells // 3, 2 * self.cells // 3})))
        reductions = tuple(self.reduction_cells)
        if (any(not isinstance(i, int) or not 0 <= i < self.cells for i in reductions)
                or len(set(reductions)) != len(reductions)):
            raise ValueError(f"search space: reduction_cells must be distinct cell indices in 0..{self.cells - 1}, "
                             f"got {list(reductions)}")
        object.__setattr__(self, "reduction_cells", tuple(sorted(reductions)))

    @property
    def cell_types(self) -> tuple[str, ...]:
        """The cell types the network has ('reduce' only with reduction cells), in ``CELL_TYPES`` order."""
        has = {"normal": len(self.reduction_cells) < self.cells, "reduce": bool(self.reduction_cells)}
        return tuple(t for t in CELL_TYPES if has[t])

    @property
    def edges(self) -> int:
        """Edges of one cell: node j has 2 + j inputs."""
        return sum(2 + j for j in range(self.nodes))

    def to_dict(self) -> dict:
        return {"cells": self.cells, "nodes": self.nodes, "channels": self.channels,
                "stem_multiplier": self.stem_multiplier, "operations": list(self.operations),
                "reduction_cells": list(self.reduction_cells)}


def edge_index(node: int, source: int) -> int:
    """The row of the alpha matrix for the edge from state ``source`` (0, 1: the cell's inputs; 2 + j: node j)
    into ``node``."""
    return sum(2 + j for j in range(node)) + source


Node = tuple[tuple[str, int], ...]  # a node of a genotype: its (operation, source state) pairs


@dataclass(frozen=True)
class Genotype:
    """A discrete cell structure per cell type: for each node, the (operation, source state) of its edges.

    Source states are numbered as in DARTS: 0 and 1 are the cell's two inputs, 2 + j is node j.
    """

    normal: tuple[Node, ...] = ()
    reduce: tuple[Node, ...] = ()
    extras: dict = field(default_factory=dict, compare=False, repr=False)  # e.g. the search space it came from

    def __post_init__(self) -> None:
        for cell_type in CELL_TYPES:
            nodes = tuple(tuple((str(op), int(src)) for op, src in node) for node in getattr(self, cell_type))
            object.__setattr__(self, cell_type, nodes)
            for j, node in enumerate(nodes):
                for op, src in node:
                    if op not in OPERATIONS or op == ZERO:
                        raise ValueError(f"genotype: {cell_type} node {j} uses operation {op!r}; choose from "
                                         f"{[o for o in OPERATIONS if o != ZERO]}")
                    if not 0 <= src < 2 + j:
                        raise ValueError(f"genotype: {cell_type} node {j} reads state {src}, but only states "
                                         f"0..{1 + j} exist before it")

    def cells(self, cell_type: str) -> tuple[Node, ...]:
        return getattr(self, cell_type)

    def to_dict(self) -> dict:
        return {"normal": [[list(edge) for edge in node] for node in self.normal],
                "reduce": [[list(edge) for edge in node] for node in self.reduce], **self.extras}

    @classmethod
    def from_dict(cls, values: Mapping) -> "Genotype":
        if "normal" not in values:
            raise ValueError("genotype: needs a 'normal' list of nodes, each a list of [operation, source] pairs")
        extras = {k: v for k, v in values.items() if k not in CELL_TYPES}
        return cls(tuple(map(tuple, values["normal"])), tuple(map(tuple, values.get("reduce", ()))), extras)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"architecture file {path} does not exist")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"architecture file {path} is not JSON: {error}") from None
        return cls.from_dict(values)

    def check_fits(self, space: SearchSpace) -> None:
        """Raise if this genotype cannot build cells of ``space`` (node counts, cell types, operations)."""
        missing = sorted({op for t in CELL_TYPES for node in self.cells(t) for op, _ in node} - set(space.operations))
        if missing:
            raise ValueError(f"genotype uses operations {missing} that are not among the network's candidate "
                             f"operations {list(space.operations)}")
        for cell_type in space.cell_types:
            if len(self.cells(cell_type)) != space.nodes:
                raise ValueError(f"genotype has {len(self.cells(cell_type))} {cell_type} nodes, but the network "
                                 f"is built with {space.nodes} nodes per cell")


class Edge(nn.Module):
    """The operations on one edge: all candidates (a mixed operation, called with weights) or the chosen one."""

    def __init__(self, operations: Sequence[str], space_operations: Sequence[str], channels: int, stride: int,
                 norm: str) -> None:
        super().__init__()
        self.ops = nn.ModuleDict({op: build_operation(op, channels, stride, norm) for op in operations if op != ZERO})
        self.columns = [list(space_operations).index(op) for op in self.ops]  # where each op's weight is

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is None:
            (op,) = self.ops.values()
            return op(x)
        mixed = None  # 'zero' is absent from self.ops: it adds nothing
        for column, op in zip(self.columns, self.ops.values()):
            term = weights[column] * op(x)
            mixed = term if mixed is None else mixed + term
        return mixed


class Cell(nn.Module):
    """A DAG cell. ``nodes`` lists, for each node, its (edge index, source state, operations) triples."""

    def __init__(self, nodes: Sequence[Sequence[tuple[int, int, Sequence[str]]]], space: SearchSpace,
                 c_prev_prev: int, c_prev: int, channels: int, reduction: bool, reduction_prev: bool,
                 norm: str) -> None:
        super().__init__()
        self.reduction = reduction
        # The input from two cells back is twice as large as the other when the previous cell reduced.
        self.preprocess0 = (FactorizedReduce(c_prev_prev, channels, norm) if reduction_prev
                            else ReLUConvNorm(c_prev_prev, channels, 1, 1, norm))
        self.preprocess1 = ReLUConvNorm(c_prev, channels, 1, 1, norm)
        self.edges = nn.ModuleDict()
        self.node_edges: list[list[tuple[int, int]]] = []
        for node in nodes:
            self.node_edges.append([])
            for index, source, operations in node:
                stride = 2 if reduction and source < 2 else 1
                self.edges[str(index)] = Edge(operations, space.operations, channels, stride, norm)
                self.node_edges[-1].append((index, source))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.node_edges:
            total = None
            for index, source in node:
                term = self.edges[str(index)](states[source], None if weights is None else weights[index])
                total = term if total is None else total + term
            states.append(total)
        return torch.cat(states[2:], dim=1)


class _CellNetwork(nn.Module):
    """Stem, cells and head; subclasses say which edges each cell has."""

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int | None, norm: str) -> None:
        super().__init__()
        network_built("darts")  # torch's thread count for this network (fastadapt.threads)
        if in_channels < 1 or (num_classes is not None and num_classes < 1):
            raise ValueError(f"network sizes must be positive, got in_channels={in_channels}, "
                             f"num_classes={num_classes}")
        self.space, self.in_channels, self.norm = space, in_channels, norm
        stem_channels = space.stem_multiplier * space.channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=norm == "layer"),
                                  _norm_layer(norm, stem_channels))
        c_prev_prev, c_prev, channels = stem_channels, stem_channels, space.channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(space.cells):
            reduction = i in space.reduction_cells
            channels = channels * 2 if reduction else channels
            nodes = self._cell_nodes("reduce" if reduction else "normal")
            self.cells.append(Cell(nodes, space, c_prev_prev, c_prev, channels, reduction, reduction_prev, norm))
            c_prev_prev, c_prev, reduction_prev = c_prev, space.nodes * channels, reduction
        self.feature_size = c_prev
        self.head = None if num_classes is None else nn.Linear(c_prev, num_classes)

    def _cell_nodes(self, cell_type: str) -> list[list[tuple[int, int, Sequence[str]]]]:
        raise NotImplementedError

    def _cell_weights(self) -> dict[str, torch.Tensor] | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, height, width) -> (batch, num_classes) logits, or (batch, features) without a head."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects images (batch, {self.in_channels}, height, width), "
                             f"got shape {tuple(x.shape)}")
        weights = self._cell_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            cell_weights = None if weights is None else weights["reduce" if cell.reduction else "normal"]
            s0, s1 = s1, cell(s0, s1, cell_weights)
        features = s1.mean((2, 3))
        return features if self.head is None else self.head(features)


class SearchNetwork(_CellNetwork):
    """The supernet: every edge mixes all candidate operations by softmax(alpha / temperature)."""

    def __init__(self, space: SearchSpace, in_channels: int = 1, num_classes: int | None = 5,
                 norm: str = "transductive") -> None:
        super().__init__(space, in_channels, num_classes, norm)
        # Small random alphas, as in DARTS: near-uniform operation weights that still break ties.
        self.alphas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(space.edges, len(space.operations)))
                                        for t in space.cell_types})
        self.register_buffer("temperature", torch.tensor(1.0))

    def _cell_nodes(self, cell_type: str) -> list[list[tuple[int, int, Sequence[str]]]]:
        return [[(edge_index(j, source), source, self.space.operations) for source in range(2 + j)]
                for j in range(self.space.nodes)]

    def _cell_weights(self) -> dict[str, torch.Tensor]:
        return architecture_weights(self.alphas, self.temperature)

    def genotype(self, alphas: Mapping[str, torch.Tensor] | None = None) -> Genotype:
        """The discrete architecture of these alphas (default: the network's own), at the current temperature."""
        alphas = self.alphas if alphas is None else alphas
        return discretise(architecture_weights(alphas, self.temperature), self.space)


def architecture_weights(alphas: Mapping[str, torch.Tensor], temperature: torch.Tensor | float
                         ) -> dict[str, torch.Tensor]:
    """softmax(alpha / temperature) over the operations of every edge, per cell type."""
    return {t: torch.softmax(alpha / temperature, dim=-1) for t, alpha in alphas.items()}


def discretise(weights: Mapping[str, torch.Tensor], space: SearchSpace) -> Genotype:
    """The genotype of architecture weights (edges x operations per cell type): on every edge the heaviest
    operation other than 'zero'; for every node the two edges whose chosen operation weighs most (ties go
    to the earlier source). A node's edges are listed by source state."""
    candidates = [i for i, op in enumerate(space.operations) if op != ZERO]
    genotype = {}
    for cell_type in space.cell_types:
        w = weights[cell_type].detach()
        if w.shape != (space.edges, len(space.operations)):
            raise ValueError(f"{cell_type} architecture weights have shape {tuple(w.shape)}, expected "
                             f"{(space.edges, len(space.operations))} (edges x operations)")
        strength, best = w[:, candidates].max(dim=1)
        nodes = []
        for j in range(space.nodes):
            sources = sorted(range(2 + j), key=lambda s: (-strength[edge_index(j, s)].item(), s))[:2]
            nodes.append(tuple((space.operations[candidates[best[edge_index(j, s)]]], s) for s in sorted(sources)))
        genotype[cell_type] = tuple(nodes)
    return Genotype(**genotype, extras={"search_space": space.to_dict()})


class DiscreteNetwork(_CellNetwork):
    """The ordinary network of a genotype: each node sums its two chosen edges, one operation each."""

    def __init__(self, genotype: Genotype, space: SearchSpace, in_channels: int = 1, num_classes: int | None = 5,
                 norm: str = "transductive") -> None:
        genotype.check_fits(space)
        self.genotype = genotype
        super().__init__(space, in_channels, num_classes, norm)

    def _cell_nodes(self, cell_type: str) -> list[list[tuple[int, int, Sequence[str]]]]:
        return [[(edge_index(j, source), source, (op,)) for op, source in node]
                for j, node in enumerate(self.genotype.cells(cell_type))]

    def load_supernet_weights(self, supernet: SearchNetwork) -> None:
        """Copy the weights of the supernet's chosen operations (and stem, preprocessing, head) into this network."""
        own = self.state_dict()
        source = supernet.state_dict()
        missing = [k for k in own if k not in source]
        if missing:
            raise ValueError(f"the supernet has no weights for {missing[:3]}...: it was built for another search space")
        self.load_state_dict({k: source[k] for k in own})


def count_parameters(model: nn.Module) -> int:
    """Trainable weights, without a supernet's architecture parameters."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(ALPHA_PREFIX))


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one image of ``input_shape`` (C, H, W), as torch's FlopCounterMode counts
    them: 2 per multiply-accumulate of convolutions and linear layers; biases, norms, pooling and
    activations are not counted."""
    parameter = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, dtype=parameter.dtype, device=parameter.device))
    return counter.get_total_flops()
