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


def test_the_sinusoid_benchmark_says_how_many_tasks_diverged_and_their_median(tmp_path):
    """benchmarks/sinusoid.py prints "diverged on 3 of 1,000 tasks (median 0.0415)" itself (docs/results.md quotes
    it), from the same per-task MSEs that fastadapt eval averages."""
    import importlib.util
    from pathlib import Path

    from fastadapt.config.presets import load_preset
    from fastadapt.runs.directory import evaluate_learner, load_run, train
    from fastadapt.training.evaluation import mean_and_ci95

    spec = importlib.util.spec_from_file_location("sinusoid_bench",
                                                  Path(__file__).resolve().parents[1] / "benchmarks" / "sinusoid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    values = torch.tensor([0.5, float("inf"), 0.1, 0.3, float("nan")])
    assert bench.divergence(values) == "diverged on 2 of 5 tasks (median 0.5000)"
    assert bench.divergence(torch.tensor([0.1, 0.2])) is None
    cfg = load_preset("sinusoid-maml").replace(iterations=2, val_every=1, val_tasks=4, test_tasks=30,
                                               output_dir=str(tmp_path / "run"), threads=1)
    train(cfg, progress=False)
    cfg, learner = load_run(tmp_path / "run")
    per_task = bench.per_task_mse(cfg, learner)
    assert {row: mean_and_ci95(v) for row, v in per_task.items()} == evaluate_learner(cfg, learner)
