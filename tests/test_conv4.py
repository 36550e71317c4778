"""Conv4: output sizes, clear errors, and where its normalisation statistics come from."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from fastadapt.models import Conv4
from fastadapt.models.conv4 import BatchStatisticsNorm2d


def test_embedding_and_head_output_sizes():
    x = torch.rand(6, 1, 28, 28)
    assert Conv4()(x).shape == (6, 64)
    assert Conv4(output_size=5)(x).shape == (6, 5)
    assert Conv4().feature_size((28, 28)) == 64
    mini = Conv4(in_channels=3, hidden=32, output_size=5, image_size=84)
    assert mini.feature_size((3, 84, 84)) == 32 * 5 * 5  # 84 -> 42 -> 21 -> 10 -> 5
    assert mini(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    assert Conv4(hidden=8)(torch.rand(3, 1, 16, 16)).shape == (3, 8)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown norm"):
        Conv4(norm="instance")
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


@pytest.mark.parametrize("norm", ["transductive", "layer"])
def test_vmapped_functional_call_normalises_each_task_alone(norm):
    """What MAML does: one vmapped call per task must equal calling the network on that task alone."""
    torch.manual_seed(0)
    net = Conv4(hidden=8, output_size=3, norm=norm, image_size=16)
    params = {name: p.detach().expand(2, *p.shape) for name, p in net.named_parameters()}
    x = torch.rand(2, 5, 1, 16, 16)
    batched = vmap(lambda p, xs: functional_call(net, p, (xs,)))(params, x)
    assert torch.allclose(batched, torch.stack([net(x[0]), net(x[1])]), atol=1e-6)
