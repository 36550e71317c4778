"""Conv4: output sizes, clear errors, and where its normalisation statistics come from."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from fastadapt.models import Conv4
from fastadapt.models.conv4 import BatchStatisticsNorm2d, to_channels_last


def test_embedding_and_head_output_sizes():
    x = torch.rand(6, 1, 28, 28)
    assert Conv4()(x).shape == (6, 64)
    assert Conv4(output_size=5)(x).shape == (6, 5)
    assert Conv4().feature_size((28, 28)) == 64
    mini = Conv4(in_channels=3, hidden=32, output_size=5, image_size=84)
    assert mini.feature_size((3, 84, 84)) == 32 * 5 * 5  # 84 -> 42 -> 21 -> 10 -> 5
    assert mini(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    assert Conv4(hidden=8)(torch.rand(3, 1, 16, 16)).shape == (3, 8)


def test_strided_network_is_the_maml_papers_omniglot_network():
    """Finn et al. 2017, sec. 5.2: four modules of 3x3 convolutions with 64 filters, batch normalisation and
    ReLU, with stride-2 convolutions instead of max-pooling; the paper's code averages the last module's
    output over its positions and feeds the 64 features to the N-way linear layer."""
    net = Conv4(output_size=5, pooling="stride")
    sizes = []
    for block in net.blocks:
        assert not any(isinstance(layer, torch.nn.MaxPool2d) for layer in block)
        assert block[0].stride == (2, 2) and block[0].kernel_size == (3, 3) and block[0].out_channels == 64
        block.register_forward_hook(lambda module, inputs, output: sizes.append(tuple(output.shape[1:])))
    x = torch.rand(6, 1, 28, 28)
    assert net(x).shape == (6, 5)
    assert sizes == [(64, 14, 14), (64, 7, 7), (64, 4, 4), (64, 2, 2)]
    convolutions = 3 * 3 * 1 * 64 + 3 * (3 * 3 * 64 * 64)  # no bias: batch normalisation's shift replaces it
    batch_norm = 4 * (64 + 64)  # scale and shift per channel
    head = 64 * 5 + 5
    assert sum(p.numel() for p in net.parameters()) == convolutions + batch_norm + head == 112_005
    assert Conv4(pooling="stride")(x).shape == (6, 64)
    assert Conv4(in_channels=3, pooling="stride").feature_size((3, 84, 84)) == 64  # positions are averaged
    assert Conv4(in_channels=3, output_size=5, pooling="stride")(torch.rand(2, 3, 84, 84)).shape == (2, 5)


def test_strided_network_averages_the_last_blocks_positions():
    torch.manual_seed(0)
    net = Conv4(hidden=8, pooling="stride")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(net(x), net.blocks(x).mean((2, 3)), atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown norm"):
        Conv4(norm="instance")
    with pytest.raises(ValueError, match="unknown pooling 'average'"):
        Conv4(pooling="average")
    with pytest.raises(ValueError, match=r"\(batch, 1, height, width\)"):
        Conv4(in_channels=1)(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(batch, 1, height, width\)"):
        Conv4()(torch.rand(2, 5, 1, 28, 28))
    with pytest.raises(ValueError, match="image_size"):
        Conv4(output_size=5, image_size=28)(torch.rand(2, 1, 84, 84))
    with pytest.raises(ValueError, match="at least 16x16"):
        Conv4().feature_size((8, 8))
    with pytest.raises(ValueError, match="input channels"):
        Conv4().feature_size((3, 28, 28))


def test_batch_statistics_norm_is_batch_norm_in_training_mode():
    torch.manual_seed(0)
    norm = BatchStatisticsNorm2d(4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = 3 * torch.randn(6, 4, 5, 5) + 1
    assert torch.allclose(norm(x), F.batch_norm(x, None, None, norm.weight, norm.bias, training=True), atol=1e-5)


def test_transductive_norm_keeps_no_state_and_uses_the_batch():
    torch.manual_seed(0)
    net = Conv4(hidden=8)
    assert list(net.buffers()) == []  # no running statistics to carry between episodes
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(net.eval()(x), net.train()(x))
    changed = x.clone()
    changed[1:] = torch.rand(3, 1, 16, 16)
    assert not torch.allclose(net(x)[0], net(changed)[0])  # example 0 is normalised with its batch


def test_layer_norm_depends_on_each_example_only():
    torch.manual_seed(0)
    net = Conv4(hidden=8, norm="layer")
    x = torch.rand(4, 1, 16, 16)
    changed = x.clone()
    changed[1:] = torch.rand(3, 1, 16, 16)
    assert torch.allclose(net(x)[0], net(changed)[0], atol=1e-6)
    assert torch.allclose(net(x[:1]), net(x)[:1], atol=1e-6)


@pytest.mark.parametrize("pooling", ["max", "stride"])
@pytest.mark.parametrize("norm", ["transductive", "layer"])
def test_vmapped_functional_call_normalises_each_task_alone(norm, pooling):
    """What MAML does: one vmapped call per task must equal calling the network on that task alone."""
    torch.manual_seed(0)
    net = Conv4(hidden=8, output_size=3, norm=norm, image_size=16, pooling=pooling)
    params = {name: p.detach().expand(2, *p.shape) for name, p in net.named_parameters()}
    x = torch.rand(2, 5, 1, 16, 16)
    batched = vmap(lambda p, xs: functional_call(net, p, (xs,)))(params, x)
    assert torch.allclose(batched, torch.stack([net(x[0]), net(x[1])]), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_channels_last_sets_channels_last_strides_even_for_one_channel(channels):
    images = torch.rand(4, channels, 6, 5)
    converted = to_channels_last(images)
    assert converted.stride() == (6 * 5 * channels, 1, 5 * channels, channels)
    assert torch.equal(converted, images)
    assert to_channels_last(torch.rand(3, 2)).stride() == (2, 1)  # not an image: as it was


def test_channels_last_conv4_runs_every_block_channels_last_on_grey_images():
    # A one-channel input looks contiguous in both orders; without explicit strides the first, largest,
    # block would silently run in NCHW.
    model = Conv4(norm="batch", channels_last=True)
    layouts = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, inputs, output: layouts.append(
            output.is_contiguous(memory_format=torch.channels_last) and not output.is_contiguous()))
    plain = Conv4(norm="batch")
    plain.load_state_dict(model.state_dict())
    images = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(model(images), plain(images), rtol=1e-4, atol=1e-5)
    assert layouts == [True, True, True, False]  # the last block's 1x1 output is both
