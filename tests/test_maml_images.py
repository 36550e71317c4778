"""MAML on Conv4 images: the vmapped meta-gradient equals a plain per-task loop, it learns, and the
normalisation choice decides whether query predictions depend on the other queries."""
import pytest
import torch

from fastadapt.algorithms import MAML
from fastadapt.algorithms.base import per_task_metric
from fastadapt.models import Conv4
from fastadapt.benchmarks.speed import reference_maml_loss
from test_metric_methods import synthetic_tasks  # the tests directory is on sys.path under pytest


@pytest.mark.parametrize("pooling", ["max", "stride"])
@pytest.mark.parametrize("norm", ["transductive", "layer"])
@pytest.mark.parametrize("steps,first_order", [(1, False), (2, False), (1, True)])
def test_meta_gradient_matches_reference_loop(norm, steps, first_order, pooling):
    torch.manual_seed(0)
    model = Conv4(hidden=8, output_size=5, norm=norm, pooling=pooling).double()
    learner = MAML(model, "cross_entropy", inner_lr=0.4, inner_steps=steps, first_order=first_order)
    batch = synthetic_tasks(3, side=28, queries=3, dtype=torch.float64)
    loss, _ = learner.meta_loss(batch)
    ours = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    ref_loss = reference_maml_loss(model, batch, 0.4, steps, first_order)
    ref = torch.cat([g.flatten() for g in torch.autograd.grad(ref_loss, list(model.parameters()))])
    assert torch.allclose(loss, ref_loss, rtol=1e-10)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_second_order_term_matters_on_conv4():
    torch.manual_seed(0)
    model = Conv4(hidden=8, output_size=5).double()
    batch = synthetic_tasks(2, side=28, dtype=torch.float64)
    grads = [torch.autograd.grad(MAML(model, "cross_entropy", inner_lr=0.4, first_order=fo).meta_loss(batch)[0],
                                 list(model.parameters())) for fo in (False, True)]
    assert any(not torch.allclose(a, b) for a, b in zip(*grads))


def held_out_accuracy_before_and_after_meta_training(learner) -> tuple[float, float]:
    """Accuracy on 10 held-out 16x16 5-way 1-shot episodes before and after 20 Adam steps on 4-task batches."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=5e-3)
    held_out = synthetic_tasks(10, seed=1000)

    def accuracy():
        outputs = learner.predict(learner.adapt(held_out.support_x, held_out.support_y), held_out.query_x)
        return per_task_metric(outputs.detach(), held_out.query_y, "cross_entropy").mean().item()

    before = accuracy()
    for step in range(20):
        loss, _ = learner.meta_loss(synthetic_tasks(4, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, accuracy()


def test_maml_on_conv4_learns_a_few_shot_problem():
    torch.manual_seed(0)
    learner = MAML(Conv4(hidden=8, output_size=5, image_size=16), "cross_entropy", inner_lr=0.4)
    before, after = held_out_accuracy_before_and_after_meta_training(learner)
    assert after > before + 0.25


@pytest.mark.parametrize("norm,leaks", [("layer", False), ("transductive", True)])
def test_query_predictions_depend_on_other_queries_only_transductively(norm, leaks):
    torch.manual_seed(0)
    learner = MAML(Conv4(hidden=8, output_size=5, norm=norm, image_size=16), "cross_entropy", inner_lr=0.4)
    batch = synthetic_tasks(2, queries=3)
    adapted = learner.adapt(batch.support_x, batch.support_y)
    changed = batch.query_x.clone()
    changed[:, 1:] = torch.rand_like(changed[:, 1:])
    first, second = learner.predict(adapted, batch.query_x)[:, 0], learner.predict(adapted, changed)[:, 0]
    assert torch.allclose(first, second, atol=1e-5) != leaks
