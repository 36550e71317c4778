"""N-way K-shot episodes: shapes, labels, disjoint support and query, seeding, fixed and chunked tasks."""
import pytest
import torch

from fastadapt.tasks import EpisodeTasks, TaskBatch
from episode_helpers import indices_of, traceable_dataset  # the tests directory is on sys.path under pytest


@pytest.mark.parametrize("uneven", [False, True])
def test_shapes_labels_and_disjoint_support_and_query(uneven):
    dataset = traceable_dataset(uneven=uneven)
    tasks = EpisodeTasks(dataset, n_way=5, k_shot=3, num_query=4)
    batch = tasks.sample(16, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (16, 15, 1, 4, 4) and batch.query_x.shape == (16, 20, 1, 4, 4)
    assert batch.support_x.dtype == torch.float32
    expected = dataset.images[indices_of(batch.support_x).flatten()].float().div(255).view_as(batch.support_x)
    assert torch.equal(batch.support_x, expected)  # the uint8 pixels scaled to [0, 1], nothing else
    assert batch.support_y.dtype == torch.int64 and tasks.output_size == 5 and tasks.loss == "cross_entropy"
    for t in range(16):
        assert torch.bincount(batch.support_y[t], minlength=5).tolist() == [3] * 5
        assert torch.bincount(batch.query_y[t], minlength=5).tolist() == [4] * 5
        support, query = indices_of(batch.support_x[t]), indices_of(batch.query_x[t])
        assert len(set(support.tolist()) | set(query.tolist())) == 35  # all different images
        # every image carries its episode label: one dataset class per label, five different classes
        true_support, true_query = dataset.labels[support], dataset.labels[query]
        mapping = {int(y): int(c) for y, c in zip(batch.support_y[t], true_support)}
        assert len(mapping) == 5 and len(set(mapping.values())) == 5
        assert all(mapping[int(y)] == int(c) for y, c in zip(batch.query_y[t], true_query))


def test_every_class_image_and_label_assignment_gets_drawn():
    dataset = traceable_dataset(classes=6, per_class=5, uneven=True)
    batch = EpisodeTasks(dataset, n_way=3, k_shot=1, num_query=1).sample(400, torch.Generator().manual_seed(1))
    drawn = torch.cat([indices_of(batch.support_x).flatten(), indices_of(batch.query_x).flatten()])
    assert set(drawn.tolist()) == set(range(len(dataset)))  # also the last images of the bigger classes
    first_class = dataset.labels[indices_of(batch.support_x[:, 0])]  # the class given label 0
    assert set(first_class.tolist()) == set(range(6))


def test_same_seed_same_episodes():
    tasks = EpisodeTasks(traceable_dataset(), n_way=4, k_shot=2, num_query=2)
    a = tasks.sample(8, torch.Generator().manual_seed(5))
    b = tasks.sample(8, torch.Generator().manual_seed(5))
    c = tasks.sample(8, torch.Generator().manual_seed(6))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)


def test_fixed_tasks_are_reproducible_and_chunking_does_not_change_them(monkeypatch):
    tasks = EpisodeTasks(traceable_dataset(), n_way=5, k_shot=2, num_query=3)
    fixed = tasks.fixed_tasks(23)
    assert torch.equal(fixed.support_x, tasks.fixed_tasks(23).support_x)
    assert not torch.equal(fixed.support_x, tasks.fixed_tasks(23, split="val").support_x)
    assert not torch.equal(fixed.support_x, tasks.fixed_tasks(23, seed=1).support_x)
    chunks = list(tasks.iter_fixed_tasks(23, chunk_size=10))
    assert [len(c) for c in chunks] == [10, 10, 3]
    joined = TaskBatch.cat(chunks)
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(joined, name), getattr(fixed, name))
    assert torch.equal(tasks.fixed_tasks(7).query_x, fixed.query_x[:7])  # more tasks extend fewer
    monkeypatch.setattr("fastadapt.tasks.episodes._KEY_BLOCK", 4)  # drawn in several blocks: still the same
    assert torch.equal(tasks.fixed_tasks(23).query_x, fixed.query_x)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        tasks.fixed_tasks(3, split="dev")
    with pytest.raises(ValueError, match="chunk_size"):
        next(tasks.iter_fixed_tasks(3, chunk_size=0))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(n_way=20), "asked for 20-way episodes but the dataset has only 5 classes"),
        (dict(n_way=1), "n_way must be at least 2"),
        (dict(k_shot=0), "k_shot must be at least 1"),
        (dict(num_query=0), "num_query must be at least 1"),
        (dict(k_shot=5, num_query=3), "need 8 images of every class, but class 'class0' has only 6"),
    ],
)
def test_impossible_episodes_are_clear_errors(options, message):
    dataset = traceable_dataset(classes=5, per_class=6, uneven=True)
    with pytest.raises(ValueError, match=message):
        EpisodeTasks(dataset, **{"n_way": 3, "k_shot": 1, "num_query": 1, **options})


def test_num_tasks_must_be_positive():
    tasks = EpisodeTasks(traceable_dataset(), n_way=2, num_query=2)
    with pytest.raises(ValueError, match="num_tasks must be at least 1"):
        tasks.sample(0, torch.Generator())
    with pytest.raises(ValueError, match="num_tasks must be at least 1"):
        tasks.fixed_tasks(0)
