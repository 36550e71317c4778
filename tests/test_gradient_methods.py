"""MAML / FOMAML / Meta-SGD / Reptile: the batched (vmap) meta-gradients equal a plain per-task loop."""
import pytest
import torch
from torch.func import functional_call

from fastadapt.algorithms import MAML, MetaSGD, Pretrained, Reptile, per_task_loss
from fastadapt.models import MLP
from fastadapt.tasks import SinusoidTasks


def _batch(num_tasks=4, seed=0):
    return SinusoidTasks(k_shot=5, num_query=7).sample(num_tasks, torch.Generator().manual_seed(seed))


def _reference_maml_grads(model, batch, lr, steps, first_order, rates=None):
    """The textbook loop: one task at a time, torch.autograd.grad(create_graph=True)."""
    params = dict(model.named_parameters())
    total = 0.0
    for t in range(batch.num_tasks):
        fast = params
        for _ in range(steps):
            loss = ((functional_call(model, fast, (batch.support_x[t],)) - batch.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - (rates[name] if rates else lr) * g for (name, p), g in zip(fast.items(), grads)}
        total = total + ((functional_call(model, fast, (batch.query_x[t],)) - batch.query_y[t]) ** 2).mean()
    meta_loss = total / batch.num_tasks
    wrt = list(params.values()) + (list(rates.values()) if rates else [])
    return meta_loss, torch.autograd.grad(meta_loss, wrt)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_reference_loop(first_order, steps):
    torch.manual_seed(0)
    learner = MAML(MLP(), "mse", inner_lr=0.05, inner_steps=steps, first_order=first_order)
    batch = _batch()
    loss, _ = learner.meta_loss(batch)
    ours = torch.autograd.grad(loss, list(learner.model.parameters()))
    ref_loss, ref = _reference_maml_grads(learner.model, batch, 0.05, steps, first_order)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_second_order_differs_from_first_order():
    torch.manual_seed(0)
    batch = _batch()
    model = MLP()
    grads = []
    for first_order in (False, True):
        learner = MAML(model, "mse", inner_lr=0.1, first_order=first_order)
        grads.append(torch.autograd.grad(learner.meta_loss(batch)[0], list(model.parameters())))
    assert any(not torch.allclose(a, b) for a, b in zip(*grads))


def test_metasgd_learns_per_weight_rates_and_matches_reference():
    torch.manual_seed(0)
    learner = MetaSGD(MLP(), "mse", inner_lr=0.02)
    with torch.no_grad():
        for rate in learner.inner_rates.values():
            rate.uniform_(0.0, 0.05)
    batch = _batch()
    loss, _ = learner.meta_loss(batch)
    rates = learner.inner_learning_rates()
    ours = torch.autograd.grad(loss, list(learner.model.parameters()) + list(rates.values()))
    _, ref = _reference_maml_grads(learner.model, batch, None, 1, False, rates=rates)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert {n for n, _ in learner.named_parameters() if n.startswith("inner_rates")}


def test_reptile_gradient_is_theta_minus_mean_adapted():
    torch.manual_seed(0)
    learner = Reptile(MLP(), "mse", inner_lr=0.02, inner_steps=3)
    batch = _batch()
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    theta = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    expected = {n: torch.zeros_like(p) for n, p in theta.items()}
    for t in range(batch.num_tasks):  # plain SGD on each task, one at a time
        fast = {n: p.clone().requires_grad_() for n, p in theta.items()}
        for _ in range(3):
            task_loss = ((functional_call(learner.model, fast, (batch.support_x[t],)) - batch.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(task_loss, list(fast.values()))
            fast = {n: (p - 0.02 * g).detach().requires_grad_() for (n, p), g in zip(fast.items(), grads)}
        for n in theta:
            expected[n] += (theta[n] - fast[n].detach()) / batch.num_tasks
    for n, p in learner.model.named_parameters():
        assert torch.allclose(p.grad, expected[n], atol=1e-6)
    assert "loss" in metrics


def test_adapt_zero_steps_returns_initialisation_per_task():
    learner = MAML(MLP(), "mse")
    batch = _batch(3)
    adapted = learner.adapt(batch.support_x, batch.support_y, steps=0)
    for name, p in learner.model.named_parameters():
        assert adapted[name].shape == (3, *p.shape)
        assert torch.equal(adapted[name][1], p.detach())


@pytest.mark.parametrize("cls", [MAML, MetaSGD, Reptile, Pretrained])
def test_each_method_reduces_loss_on_sinusoid(cls):
    torch.manual_seed(0)
    learner = cls(MLP(), "mse", inner_lr=0.01)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    tasks, generator = SinusoidTasks(k_shot=10), torch.Generator().manual_seed(0)
    test = tasks.fixed_tasks(100)

    def test_mse():
        with torch.no_grad():
            out = learner.predict(learner.adapt(test.support_x, test.support_y, steps=1), test.query_x)
            return per_task_loss(out, test.query_y, "mse").mean().item()

    before = test_mse()
    for _ in range(150):
        loss, _ = learner.meta_loss(tasks.sample(10, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert test_mse() < 0.8 * before


@pytest.mark.parametrize("kwargs, message", [
    ({"inner_lr": -0.1}, "inner_lr .* positive"),
    ({"inner_lr": 0.0}, "inner_lr .* positive"),
    ({"inner_steps": 0}, "inner_steps must be at least 1"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAML(MLP(), "mse", **kwargs)


def test_unknown_loss_and_wrong_target_shape():
    with pytest.raises(ValueError, match="unknown loss"):
        MAML(MLP(), "hinge")
    with pytest.raises(ValueError, match="mse loss: outputs"):
        per_task_loss(torch.zeros(2, 5, 1), torch.zeros(2, 5), "mse")
    with pytest.raises(ValueError, match="cross_entropy loss"):
        per_task_loss(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long), "cross_entropy")


def test_wrong_input_width_names_the_problem():
    learner = MAML(MLP(input_size=1), "mse")
    batch = _batch()
    with pytest.raises(ValueError, match="MLP expects inputs whose last dimension is 1"):
        learner.adapt(torch.zeros(4, 5, 3), batch.support_y)
