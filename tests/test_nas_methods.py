"""MetaNAS and T-NAS: meta-gradients of the architecture weights, warm-up, temperature schedule, task architectures."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastadapt.algorithms.base import per_task_metric
from fastadapt.algorithms.metanas import MetaNAS
from fastadapt.algorithms.tnas import TNAS
from fastadapt.models import Conv4
from fastadapt.models.darts import SearchNetwork, SearchSpace
from test_metric_methods import synthetic_tasks  # the tests directory is on sys.path under pytest

SPACE = SearchSpace(cells=2, nodes=2, channels=2, stem_multiplier=1,
                    operations=("conv_3x3", "avg_pool_3x3", "skip_connect", "zero"), reduction_cells=(1,))


def _network(seed=0, dtype=torch.float64, space=SPACE, n_way=3):
    torch.manual_seed(seed)
    net = SearchNetwork(space, in_channels=1, num_classes=n_way).to(dtype)
    with torch.no_grad():
        for alpha in net.alphas.values():
            alpha.normal_(0, 0.5)  # well away from uniform, so every operation's weight matters differently
    return net


def _batch(tasks=2, dtype=torch.float64, seed=0):
    return synthetic_tasks(tasks, n_way=3, side=8, queries=2, seed=seed, dtype=dtype)


def test_tnas_alpha_meta_gradient_matches_finite_differences():
    net = _network()
    learner = TNAS(net, "cross_entropy", inner_lr=0.3, alpha_inner_lr=2.0, inner_steps=2,
                   temperature_start=1.0, temperature_end=0.5)
    batch = _batch()
    alphas = learner.architecture_parameters()
    grads = torch.autograd.grad(learner.meta_loss(batch)[0], alphas)
    assert all(g.abs().max() > 1e-4 for g in grads)  # the check is not vacuous
    # directional derivatives along random directions (every entry of both alphas) and along single entries
    generator = torch.Generator().manual_seed(0)
    directions = [[torch.randn(a.shape, generator=generator, dtype=a.dtype) for a in alphas] for _ in range(2)]
    for which, index in ((1, 7),):
        directions.append([torch.zeros_like(a) for a in alphas])
        directions[-1][which].view(-1)[index] = 1.0
    eps = 1e-6
    for direction in directions:
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                for alpha, d in zip(alphas, direction):
                    alpha += sign * eps * d
                losses.append(learner.meta_loss(batch)[0])
                for alpha, d in zip(alphas, direction):
                    alpha -= sign * eps * d
        numeric = (losses[0] - losses[1]) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(grads, direction))
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-10)


def _reference_adaptation(net, batch, inner_lr, alpha_lr, steps, temperatures):
    """One task at a time, plain autograd: SGD on weights and alphas, the softmax temperature of each step."""
    adapted = []
    for t in range(batch.num_tasks):
        params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
        for step in range(steps):
            buffers = {"temperature": torch.tensor(temperatures[step], dtype=torch.float64)}
            loss = F.cross_entropy(functional_call(net, (params, buffers), (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - (alpha_lr if n.startswith("alphas.") else inner_lr) * g).detach().requires_grad_()
                      for (n, p), g in zip(params.items(), grads)}
        adapted.append(params)
    return adapted


def test_metanas_reptile_update_of_weights_and_alphas_matches_per_task_loop():
    net = _network()
    learner = MetaNAS(net, "cross_entropy", inner_lr=0.3, alpha_inner_lr=0.7, inner_steps=3,
                      temperature_start=1.0, temperature_end=0.1)
    batch = _batch(3)
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    adapted = _reference_adaptation(net, batch, 0.3, 0.7, 3, [1.0, 0.55, 0.1])
    for name, p in net.named_parameters():
        expected = p.detach() - torch.stack([a[name].detach() for a in adapted]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)
    assert any(p.grad.abs().max() > 1e-3 for p in learner.architecture_parameters())
    assert metrics["warm-up"] == 0.0


def test_metanas_first_order_maml_gradient_matches_per_task_loop():
    net = _network()
    learner = MetaNAS(net, "cross_entropy", outer="fomaml", inner_lr=0.3, alpha_inner_lr=0.7, inner_steps=2,
                      temperature_start=1.0, temperature_end=0.2)
    batch = _batch(2)
    loss, _ = learner.meta_loss(batch)
    ours = torch.autograd.grad(loss, list(net.parameters()))
    expected = [torch.zeros_like(p) for p in net.parameters()]
    for t, params in enumerate(_reference_adaptation(net, batch, 0.3, 0.7, 2, [1.0, 0.2])):
        buffers = {"temperature": torch.tensor(0.2, dtype=torch.float64)}  # queries at the last step's temperature
        query_loss = F.cross_entropy(functional_call(net, (params, buffers), (batch.query_x[t],)), batch.query_y[t])
        for total, g in zip(expected, torch.autograd.grad(query_loss, list(params.values()))):
            total += g / batch.num_tasks
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("outer", ["reptile", "fomaml"])
def test_warm_up_freezes_alphas_then_releases_them_and_survives_a_checkpoint(outer):
    net = _network(dtype=torch.float32)
    learner = MetaNAS(net, "cross_entropy", outer=outer, inner_steps=3, warmup_iterations=2, alpha_inner_lr=0.5)
    batch = _batch(2, dtype=torch.float32)
    for iteration in range(3):
        warming_up = iteration < 2
        assert learner.warming_up == warming_up
        adapted = learner.adapt(batch.support_x, batch.support_y)
        same_alphas = [torch.equal(adapted[f"alphas.{t}"][0], a) for t, a in net.alphas.items()]
        assert all(same_alphas) == warming_up
        # the temperature stays at its start value in warm-up, and ends at 0.05 after it
        assert adapted["temperature"].tolist() == pytest.approx([1.0 if warming_up else 0.05] * 2)
        learner.zero_grad()
        loss, metrics = learner.meta_loss(batch)
        loss.backward()
        assert metrics["warm-up"] == float(warming_up)
        assert all((p.grad is None) == warming_up for p in learner.architecture_parameters())
        assert all(p.requires_grad for p in learner.parameters())
        if iteration == 0:  # a learner rebuilt from a checkpoint continues the schedule
            copy = MetaNAS(_network(dtype=torch.float32), "cross_entropy", warmup_iterations=2)
            copy.load_state_dict(learner.state_dict())
            assert int(copy.meta_iteration) == 1 and copy.warming_up


def test_metanas_learns_a_few_shot_problem():
    space = SearchSpace(cells=2, nodes=2, channels=4, operations=("conv_3x3", "max_pool_3x3", "skip_connect", "zero"),
                        reduction_cells=(1,))
    torch.manual_seed(0)
    learner = MetaNAS(SearchNetwork(space, 1, 5), "cross_entropy", outer="fomaml", inner_lr=0.3, inner_steps=2,
                      alpha_inner_lr=0.3)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    held_out = synthetic_tasks(10, seed=1000)

    def accuracy():
        with torch.no_grad():
            outputs = learner.predict(learner.adapt(held_out.support_x, held_out.support_y), held_out.query_x)
        return per_task_metric(outputs, held_out.query_y, "cross_entropy").mean().item()

    before = accuracy()
    for step in range(15):
        loss, _ = learner.meta_loss(synthetic_tasks(4, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert accuracy() > before + 0.12  # 100 held-out queries


def test_tnas_gives_each_task_its_own_architecture():
    batch = _batch(6, dtype=torch.float32)
    learner = TNAS(_network(dtype=torch.float32), "cross_entropy", alpha_inner_lr=0.0, inner_steps=2).eval()
    meta = learner.architecture()
    assert learner.task_architectures(learner.adapt(batch.support_x, batch.support_y)) == [meta] * 6
    learner.alpha_inner_lr = 200.0
    per_task = learner.task_architectures(learner.adapt(batch.support_x, batch.support_y))
    assert len(set(per_task)) > 1


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match="outer update must be one of"):
        MetaNAS(_network(), "cross_entropy", outer="maml")
    with pytest.raises(ValueError, match="alpha_inner_lr must be >= 0"):
        TNAS(_network(), "cross_entropy", alpha_inner_lr=-1.0)
    with pytest.raises(ValueError, match="temperatures must be positive"):
        MetaNAS(_network(), "cross_entropy", temperature_end=0.0)
    with pytest.raises(TypeError, match="must be a models.darts.SearchNetwork"):
        TNAS(Conv4(hidden=4, output_size=3), "cross_entropy")
