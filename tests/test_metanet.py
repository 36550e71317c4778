import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.metanet import FastWeightGenerator, MetaNet, read_memory
from episode_helpers import FEATURES, N_WAY, SIDE, fixed_episodes, meta_train  # tests/ is on sys.path


def tiny_metanet() -> MetaNet:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, FEATURES), nn.ReLU())
    return MetaNet(encoder, FEATURES, N_WAY, representation_dim=12, hidden_size=10, generator_hidden=8)


def test_memory_read_is_a_convex_combination_of_stored_fast_weights():
    torch.manual_seed(0)
    keys, queries = torch.randn(2, 4, 5), torch.randn(2, 3, 5)
    values = {"hidden": torch.randn(2, 4, 6, 7), "output": torch.randn(2, 4, 3, 6)}
    attention, read = read_memory(keys, values, queries)
    assert attention.shape == (2, 3, 4)
    assert (attention > 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 3))
    for name, value in values.items():
        assert read[name].shape == (2, 3, *value.shape[2:])
        for t in range(2):
            for q in range(3):
                mixture = sum(attention[t, q, i] * value[t, i] for i in range(4))
                torch.testing.assert_close(read[name][t, q], mixture)


def test_memory_attention_is_a_softmax_of_cosine_similarity():
    keys = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    attention, _ = read_memory(keys, {}, torch.tensor([[[3.0, 0.0]]]))
    expected = torch.tensor([math.e, 1.0, math.exp(-1)])
    torch.testing.assert_close(attention[0, 0], expected / expected.sum())


def test_gradient_preprocessing():
    generator = FastWeightGenerator(hidden=4, scale=10.0)
    g = torch.tensor([1.0, -math.exp(-5), 0.0, 1e-6])
    expected = torch.tensor([[0.0, 1.0], [-0.5, -1.0], [-1.0, 0.0], [-1.0, math.exp(10) * 1e-6]])
    torch.testing.assert_close(generator.preprocess(g), expected)
    assert generator(torch.randn(3, 5, 2)).shape == (3, 5, 2)


def test_fast_weights_are_generated_from_per_example_and_per_pair_gradients():
    torch.manual_seed(0)
    model, tasks = tiny_metanet(), fixed_episodes(tasks=2)
    adapted = model.adapt(tasks.support_x, tasks.support_y)
    assert adapted.representation_fast.shape == (2, 12, FEATURES)
    assert adapted.keys.shape == (2, N_WAY, 12)
    assert adapted.values["hidden"].shape == (2, N_WAY, 10, FEATURES)
    assert adapted.values["output"].shape == (2, N_WAY, N_WAY, 10)

    features = model.encoder(tasks.support_x.flatten(0, 1)).view(2, N_WAY, FEATURES)
    task, example = 1, 2
    # Example-level: d applied to the gradient of this one example's loss under the slow weights.
    weights = (model.hidden.weight, model.output.weight)
    logits = model.output(F.relu(model.hidden(features[task, example])))
    gradients = torch.autograd.grad(F.cross_entropy(logits, tasks.support_y[task, example]), weights)
    for name, g in zip(("hidden", "output"), gradients):
        torch.testing.assert_close(adapted.values[name][task, example], model.base_generator(g))
    # Task-level: the mean of m over the gradients of the pairs (i, i+1 mod S); all pairs differ in 1-shot.
    represent = lambda x: F.relu(model.representation(x))  # noqa: E731
    fast = 0
    for i in range(N_WAY):
        distance = (represent(features[task, i]) - represent(features[task, (i + 1) % N_WAY])).norm()
        (g,) = torch.autograd.grad(F.relu(model.margin - distance).pow(2), model.representation.weight)
        fast = fast + model.representation_generator(g) / N_WAY
    torch.testing.assert_close(adapted.representation_fast[task], fast)


def test_predictions_use_the_support_labels():
    torch.manual_seed(0)
    model, tasks = tiny_metanet(), fixed_episodes(tasks=2)
    outputs = model.predict(model.adapt(tasks.support_x, tasks.support_y), tasks.query_x)
    assert outputs.shape == (2, N_WAY * 2, N_WAY)
    relabelled = model.predict(model.adapt(tasks.support_x, (tasks.support_y + 1) % N_WAY), tasks.query_x)
    assert not torch.allclose(outputs, relabelled)
    with torch.no_grad():  # evaluation runs without autograd; the inner gradients must still be computed
        torch.testing.assert_close(model.predict(model.adapt(tasks.support_x, tasks.support_y), tasks.query_x),
                                   outputs)


def test_meta_loss_goes_down_and_trains_every_part():
    torch.manual_seed(0)
    def every_part_has_a_gradient(model):  # the generators m and d are reached only through the fast weights
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    losses = meta_train(tiny_metanet(), fixed_episodes(), lr=3e-3, check_first=every_part_has_a_gradient)
    assert losses[-1] < 0.5 * losses[0]


def test_clear_errors():
    model, tasks = tiny_metanet(), fixed_episodes(tasks=2)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        model.adapt(tasks.support_x, tasks.support_y - 1)
    with pytest.raises(ValueError, match="support_y"):
        model.adapt(tasks.support_x, tasks.support_y.flatten())
    with pytest.raises(ValueError, match="gradient steps"):
        model.adapt(tasks.support_x, tasks.support_y, steps=1)
    with pytest.raises(ValueError, match="query_x"):
        model.predict(model.adapt(tasks.support_x, tasks.support_y), tasks.query_x[:1])
    with pytest.raises(ValueError, match="margin"):
        MetaNet(nn.Identity(), 4, 3, margin=0.0)
