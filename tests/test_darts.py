"""The DARTS search space: mixed operations, discretisation, the discrete network, parameter and FLOP counts."""
import pytest
import torch
from torch.func import functional_call, vmap

from fastadapt.models import Conv4
from fastadapt.models.darts import (
    Edge, Genotype, SearchNetwork, SearchSpace, DiscreteNetwork, count_flops, count_parameters, discretise, edge_index,
)

OPS = ("conv_3x3", "sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "zero")
SPACE = SearchSpace(cells=3, nodes=3, channels=4, stem_multiplier=2, operations=OPS, reduction_cells=(1, 2))
GENOTYPE = Genotype(
    normal=((("sep_conv_3x3", 0), ("skip_connect", 1)), (("conv_3x3", 1), ("max_pool_3x3", 2)),
            (("dil_conv_3x3", 0), ("avg_pool_3x3", 3))),
    reduce=((("max_pool_3x3", 0), ("conv_3x3", 1)), (("skip_connect", 0), ("dil_conv_3x3", 2)),
            (("sep_conv_3x3", 2), ("skip_connect", 3))),
)


def one_hot_alphas(genotype, space):
    """Alphas whose softmax is exactly one-hot: the genotype's operation on its edges, 'zero' on all others."""
    alphas = {}
    for cell_type in space.cell_types:
        alpha = torch.full((space.edges, len(space.operations)), -1e4)
        alpha[:, space.operations.index("zero")] = 0.0
        for j, node in enumerate(genotype.cells(cell_type)):
            for op, source in node:
                alpha[edge_index(j, source)] = -1e4
                alpha[edge_index(j, source), space.operations.index(op)] = 0.0
        alphas[cell_type] = alpha
    return alphas


@pytest.mark.parametrize("norm", ["transductive", "layer"])
def test_one_hot_supernet_equals_discretised_network_exactly(norm):
    torch.manual_seed(0)
    supernet = SearchNetwork(SPACE, in_channels=1, num_classes=5, norm=norm)
    with torch.no_grad():
        for cell_type, alpha in one_hot_alphas(GENOTYPE, SPACE).items():
            supernet.alphas[cell_type].copy_(alpha)
    weights = {t: torch.softmax(a, -1) for t, a in supernet.alphas.items()}
    assert all(set(w.unique().tolist()) == {0.0, 1.0} for w in weights.values())
    assert discretise(weights, SPACE) == GENOTYPE
    discrete = DiscreteNetwork(supernet.genotype(), SPACE, in_channels=1, num_classes=5, norm=norm)
    discrete.load_supernet_weights(supernet)
    assert count_parameters(discrete) < count_parameters(supernet)
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(supernet(x), discrete(x))
    # and per task under vmap, the way MAML runs it (batch-statistics norms take their vmap path there)
    tasks = torch.rand(3, 4, 1, 28, 28)
    run = lambda model: vmap(lambda xs: functional_call(model, dict(model.named_parameters()), (xs,)))(tasks)
    assert torch.equal(run(supernet), run(discrete))


def test_discretisation_keeps_the_two_strongest_inputs_and_never_zero():
    space = SearchSpace(cells=1, nodes=3, channels=4, operations=("conv_3x3", "max_pool_3x3", "skip_connect", "zero"),
                        reduction_cells=())
    w = torch.full((space.edges, 4), 0.1)
    conv, pool, skip, zero = range(4)

    def set_edge(node, source, op, value):
        w[edge_index(node, source), op] = value

    set_edge(0, 0, zero, 0.9)          # node 0 has only two inputs: both kept, whatever their weights
    set_edge(0, 1, pool, 0.3)
    set_edge(1, 0, zero, 0.99)         # 'zero' dominates this edge, but its best real operation is weak...
    set_edge(1, 1, skip, 0.5)
    set_edge(1, 2, conv, 0.4)          # ...so node 1 keeps sources 1 and 2
    set_edge(2, 0, pool, 0.6)
    set_edge(2, 1, conv, 0.6)          # a tie with source 0 at 0.6: the earlier source wins
    set_edge(2, 3, skip, 0.7)
    genotype = discretise({"normal": w}, space)
    assert genotype.normal == (
        (("conv_3x3", 0), ("max_pool_3x3", 1)),
        (("skip_connect", 1), ("conv_3x3", 2)),
        (("max_pool_3x3", 0), ("skip_connect", 3)),
    )
    assert genotype.reduce == ()


def test_zero_operation_contributes_nothing():
    torch.manual_seed(0)
    edge = Edge(("conv_3x3", "zero", "skip_connect"), ("conv_3x3", "zero", "skip_connect"), 4, 1, "layer")
    x = torch.randn(2, 4, 6, 6)
    conv = edge.ops["conv_3x3"](x)
    assert "zero" not in edge.ops
    assert torch.equal(edge(x, torch.tensor([0.2, 0.5, 0.3])), 0.2 * conv + 0.3 * x)
    assert torch.equal(edge(x, torch.tensor([0.0, 1.0, 0.0])), torch.zeros_like(x))
    # all of an edge's weight on 'zero' removes the edge from the supernet's function
    supernet = SearchNetwork(SPACE, in_channels=1, num_classes=5)
    x = torch.rand(4, 1, 16, 16)
    before = supernet(x)
    with torch.no_grad():
        supernet.alphas["normal"][edge_index(2, 1)] = -1e4
        supernet.alphas["normal"][edge_index(2, 1), OPS.index("zero")] = 0.0
        dead = supernet.cells[0].edges[str(edge_index(2, 1))]
        for p in dead.parameters():
            p.add_(torch.randn_like(p))  # its operations' weights no longer matter
    after = supernet(x)
    with torch.no_grad():
        for p in dead.parameters():
            p.mul_(-3.0)
    assert not torch.equal(before, after)
    assert torch.equal(after, supernet(x))


def test_parameter_and_flop_counts_by_hand():
    # stem: 3x3 conv 1->2 (18) + norm (4); cell: two 1x1 preprocessing convs 2->2 (4 + norm 4 each), a 3x3 conv
    # 2->2 (36 + norm 4) and a skip; head: linear 2->3 (6 + 3). Convolutions before batch statistics have no bias.
    space = SearchSpace(cells=1, nodes=1, channels=2, stem_multiplier=1, operations=("conv_3x3", "skip_connect"),
                        reduction_cells=())
    net = DiscreteNetwork(Genotype(normal=((("conv_3x3", 0), ("skip_connect", 1)),)), space, 1, 3)
    assert count_parameters(net) == 22 + 8 + 8 + 40 + 9
    # FLOPs on an 8x8 image, 2 per multiply-accumulate: stem 2*2*1*9*64, preprocessing 2 * 2*2*2*64,
    # 3x3 conv 2*2*2*9*64, head 2*2*3
    assert count_flops(net, (1, 8, 8)) == 2304 + 1024 + 4608 + 12

    # add a reduction cell (width 4, stride 2): 1x1 preprocessing 2->4 twice (8 + norm 8 each), a separable
    # 3x3 conv (two blocks of depthwise 36 + pointwise 16 + norm 8) and a max-pool; head 4->3 (12 + 3)
    space = SearchSpace(cells=2, nodes=1, channels=2, stem_multiplier=1,
                        operations=("conv_3x3", "sep_conv_3x3", "max_pool_3x3", "skip_connect"), reduction_cells=(1,))
    genotype = Genotype(normal=((("conv_3x3", 0), ("skip_connect", 1)),),
                        reduce=((("sep_conv_3x3", 0), ("max_pool_3x3", 1)),))
    net = DiscreteNetwork(genotype, space, 1, 3)
    assert count_parameters(net) == 22 + 56 + (16 + 16 + 120) + 15
    # reduction cell: preprocessing 2 * 2*4*2*64 at 8x8; separable conv at 4x4 out: 2 * (2*4*9*16 + 2*4*4*16)
    assert count_flops(net, (1, 8, 8)) == 2304 + 5632 + 2048 + 3328 + 24
    assert net(torch.rand(2, 1, 7, 7)).shape == (2, 3)  # odd sizes reduce too (7 -> 4)

    conv4 = Conv4(hidden=4, output_size=5, image_size=28)
    assert count_parameters(conv4) == (36 + 8) + 3 * (144 + 8) + 25
    assert count_flops(conv4, (1, 28, 28)) == 2 * 4 * 9 * 784 + 2 * 144 * (196 + 49 + 9) + 40


def test_genotype_json_round_trip_and_errors(tmp_path):
    path = tmp_path / "arch.json"
    discretise({t: torch.rand(SPACE.edges, len(OPS)) for t in SPACE.cell_types}, SPACE).save(path)
    loaded = Genotype.load(path)
    assert loaded.extras["search_space"]["operations"] == list(OPS)
    DiscreteNetwork(loaded, SPACE)  # builds
    with pytest.raises(ValueError, match="node 1 reads state 3"):
        Genotype(normal=((("conv_3x3", 0), ("conv_3x3", 1)), (("conv_3x3", 3), ("conv_3x3", 1))))
    with pytest.raises(ValueError, match="operation 'zero'"):
        Genotype(normal=((("zero", 0), ("conv_3x3", 1)),))
    with pytest.raises(ValueError, match="1 normal nodes, but the network is built with 3"):
        DiscreteNetwork(Genotype(normal=((("conv_3x3", 0), ("conv_3x3", 1)),)), SPACE)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Genotype.load(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        Genotype.load(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"operations": ("conv_3x3", "conv_5x5")}, "unknown operation"),
    ({"operations": ("zero",)}, "besides 'zero'"),
    ({"reduction_cells": (3,)}, "reduction_cells must be distinct cell indices in 0..2"),
    ({"channels": 1}, "channels must be an integer >= 2"),
])
def test_bad_search_space(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**kwargs)


def test_default_reductions_follow_darts():
    assert SearchSpace(cells=8).reduction_cells == (2, 5)
    assert SearchSpace(cells=3).reduction_cells == (1, 2)
    assert SearchSpace(cells=3, reduction_cells=()).cell_types == ("normal",)
