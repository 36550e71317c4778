import math

import pytest
import torch

from fastadapt.tasks import SinusoidTasks, TaskBatch


def test_sample_shapes_and_ranges():
    tasks = SinusoidTasks(k_shot=5, num_query=20)
    batch = tasks.sample(8, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (8, 5, 1) and batch.query_x.shape == (8, 20, 1)
    assert batch.support_y.shape == (8, 5, 1) and batch.query_y.shape == (8, 20, 1)
    assert batch.support_x.abs().max() <= 5 and batch.query_x.abs().max() <= 5
    assert batch.support_y.abs().max() <= 5.0


def test_points_lie_on_one_sinusoid_per_task():
    tasks = SinusoidTasks(k_shot=3, num_query=3)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    amp, phase = tasks.sample_functions(4, generator)
    generator.set_state(state)
    batch = tasks.sample(4, generator)
    assert torch.allclose(batch.support_y, amp * torch.sin(batch.support_x - phase))
    assert torch.allclose(batch.query_y, amp * torch.sin(batch.query_x - phase))
    assert ((amp >= 0.1) & (amp <= 5.0)).all() and ((phase >= 0) & (phase <= math.pi)).all()


def test_seeded_and_fixed_tasks_are_reproducible():
    tasks = SinusoidTasks()
    a = tasks.sample(4, torch.Generator().manual_seed(1))
    b = tasks.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(a.support_x, b.support_x)
    assert torch.equal(tasks.fixed_tasks(10).query_y, tasks.fixed_tasks(10).query_y)
    assert not torch.equal(tasks.fixed_tasks(10, "val").query_y, tasks.fixed_tasks(10, "test").query_y)
    with pytest.raises(ValueError, match="unknown split"):
        tasks.fixed_tasks(10, "nope")


@pytest.mark.parametrize("kwargs, message", [
    ({"k_shot": 0}, "k_shot must be at least 1"),
    ({"num_query": 0}, "num_query must be at least 1"),
    ({"amplitude": (5.0, 0.1)}, "amplitude range"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SinusoidTasks(**kwargs)


def test_task_batch_validates_shapes():
    x = torch.zeros(2, 5, 1)
    with pytest.raises(ValueError, match="disagree on the number of tasks"):
        TaskBatch(x, x, torch.zeros(3, 5, 1), torch.zeros(3, 5, 1))
    with pytest.raises(ValueError, match="support_x .* and support_y .* disagree"):
        TaskBatch(x, torch.zeros(2, 4, 1), x, x)
    with pytest.raises(ValueError, match="features"):
        TaskBatch(x, x, torch.zeros(2, 5, 2), torch.zeros(2, 5, 1))
    with pytest.raises(ValueError, match=r"shape \(tasks, examples"):
        TaskBatch(torch.zeros(5), x, x, x)


def test_task_batch_split_and_cat_round_trip():
    batch = SinusoidTasks().sample(10, torch.Generator().manual_seed(0))
    chunks = batch.split(3)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert torch.equal(TaskBatch.cat(chunks).query_x, batch.query_x)
