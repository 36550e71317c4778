import pytest
import torch
from torch import nn

from fastadapt.algorithms.snail import SNAIL, AttentionBlock, DenseBlock, TCBlock
from episode_helpers import FEATURES, N_WAY, SIDE, fixed_episodes, meta_train  # tests/ is on sys.path


def tiny_snail(k_shot: int = 1) -> SNAIL:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, FEATURES), nn.ReLU())
    return SNAIL(encoder, FEATURES, N_WAY, k_shot)


def assert_causal(network, channels: int, length: int = 9) -> None:
    """Perturbing steps after t leaves the outputs at steps <= t unchanged; perturbing t changes step t."""
    x = torch.randn(2, length, channels)
    out = network(x)
    for t in range(length - 1):
        perturbed = x.clone()
        perturbed[:, t + 1 :] += torch.randn_like(perturbed[:, t + 1 :])
        torch.testing.assert_close(network(perturbed)[:, : t + 1], out[:, : t + 1])
        perturbed[:, t] += 1.0
        assert not torch.allclose(network(perturbed)[:, t], out[:, t])


@pytest.mark.parametrize(
    "block", [DenseBlock(5, 2, 4), TCBlock(5, 9, 4), AttentionBlock(5, 8, 4)], ids=["dense", "tc", "attention"]
)
def test_blocks_are_causal_and_concatenate_their_output(block):
    torch.manual_seed(0)
    assert_causal(block, 5)
    assert block(torch.randn(2, 9, 5)).shape == (2, 9, block.out_channels)


def test_model_is_causal():
    torch.manual_seed(0)
    model = tiny_snail()
    assert_causal(model.causal_logits, FEATURES + N_WAY)


def test_tc_block_dilations_cover_the_sequence():
    block = TCBlock(5, 16, 4)
    assert [b.dilation for b in block.blocks] == [1, 2, 4, 8]
    assert block.out_channels == 5 + 4 * 4
    # The last output depends on the first input through the convolutions alone.
    x = torch.randn(1, 16, 5)
    perturbed = x.clone()
    perturbed[:, 0] += 1.0
    assert not torch.allclose(block(perturbed)[:, -1], block(x)[:, -1])


def test_paper_architecture_sizes():
    model = SNAIL(nn.Identity(), 64, 5, 1)  # 5-way 1-shot: sequences of 6, TCBlocks of 3 DenseBlocks
    assert [type(b).__name__ for b in model.blocks] == ["AttentionBlock", "TCBlock", "AttentionBlock", "TCBlock",
                                                         "AttentionBlock"]
    assert [b.out_channels for b in model.blocks] == [69 + 32, 101 + 3 * 128, 485 + 128, 613 + 3 * 128, 997 + 256]
    assert (model.classifier.in_features, model.classifier.out_features) == (1253, 5)


@pytest.mark.parametrize("block", [DenseBlock(5, 2, 4), TCBlock(5, 9, 4), AttentionBlock(5, 8, 4)],
                         ids=["dense", "tc", "attention"])
def test_block_extend_equals_running_each_extended_sequence(block):
    torch.manual_seed(0)
    prefix, last = torch.randn(2, 3, 5), torch.randn(2, 4, 5)
    new_prefix, new_last = block.extend(prefix, last)
    torch.testing.assert_close(new_prefix, block(prefix))
    for q in range(last.shape[1]):
        full = block(torch.cat([prefix, last[:, q : q + 1]], 1))
        torch.testing.assert_close(new_last[:, q], full[:, -1])


def test_predict_classifies_each_query_from_support_plus_itself():
    torch.manual_seed(0)
    model, tasks = tiny_snail(), fixed_episodes(tasks=2, queries=2)
    support = model.adapt(tasks.support_x, tasks.support_y)
    assert support.shape == (2, N_WAY, FEATURES + N_WAY)
    outputs = model.predict(support, tasks.query_x)
    assert outputs.shape == (2, N_WAY * 2, N_WAY)
    query_features = model.encoder(tasks.query_x.flatten(0, 1)).view(2, -1, FEATURES)
    for j in range(query_features.shape[1]):
        unlabelled = torch.cat([query_features[:, j], torch.zeros(2, N_WAY)], -1)
        sequence = torch.cat([support, unlabelled.unsqueeze(1)], 1)
        torch.testing.assert_close(outputs[:, j], model.causal_logits(sequence)[:, -1])


def test_meta_loss_goes_down():
    torch.manual_seed(0)
    losses = meta_train(tiny_snail(), fixed_episodes(), lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_clear_errors():
    model, tasks = tiny_snail(), fixed_episodes(tasks=2)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        model.adapt(tasks.support_x, tasks.support_y + 3)
    with pytest.raises(ValueError, match="support_x"):
        model.adapt(tasks.support_x[0], tasks.support_y)
    with pytest.raises(ValueError, match="gradient steps"):
        model.adapt(tasks.support_x, tasks.support_y, steps=5)
    with pytest.raises(ValueError, match="query_x"):
        model.predict(model.adapt(tasks.support_x, tasks.support_y), tasks.query_x[0])
    with pytest.raises(ValueError, match="k_shot"):
        SNAIL(nn.Identity(), 4, 3, 0)
