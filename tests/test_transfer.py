"""Baseline, Baseline++ and embedding + logistic regression: mini-batch training through the trainer,
fitting a new head per task, and the runs they make."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms import Baseline, BaselinePlusPlus, EmbeddingLogisticRegression
from fastadapt.config.schema import Config
from fastadapt.datasets.base import ClassDataset
from fastadapt.models import Conv4
from fastadapt.runs.directory import build_learner, load_run, train
from fastadapt.tasks import ClassMiniBatches, TaskBatch
from fastadapt.training.builders import build_tasks
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.threads import using_threads
from fastadapt.training.trainer import Trainer
from episode_helpers import write_glyph_folder  # the tests directory is on sys.path under pytest
from run_helpers import Killed, kill_at  # the tests directory is on sys.path under pytest


def _dataset(classes=6, per_class=4, side=16) -> ClassDataset:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(classes * per_class, 1, side, side, generator=g) * 255).to(torch.uint8)
    return ClassDataset(images, torch.arange(classes).repeat_interleave(per_class), [f"c{i}" for i in range(classes)])


def _episodes(tasks=3, n_way=4, shots=2, queries=3, width=10):
    """Features that are class centres plus noise: a linear head separates them."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(tasks, n_way, width, generator=g) * 3

    def draw(k):
        y = torch.arange(n_way).repeat_interleave(k).repeat(tasks, 1)
        x = centres.gather(1, y.unsqueeze(-1).expand(-1, -1, width)) + 0.3 * torch.randn(tasks, n_way * k, width,
                                                                                          generator=g)
        return x, y

    return TaskBatch(*draw(shots), *draw(queries))


def test_minibatches_are_distinct_images_with_their_global_class():
    data = _dataset()
    batches = ClassMiniBatches(data)
    assert batches.output_size == 6 and batches.input_shape == (1, 16, 16)
    batch = batches.sample(10, torch.Generator().manual_seed(3))
    assert batch.support_x.shape == (10, 0, 1, 16, 16) and batch.query_x.shape == (10, 1, 1, 16, 16)
    index = [int(((data.images.float() / 255 - x).abs().flatten(1).sum(1) == 0).nonzero()) for x in batch.query_x[:, 0]]
    assert len(set(index)) == 10 and data.labels[index].tolist() == batch.query_y[:, 0].tolist()
    again = batches.sample(10, torch.Generator().manual_seed(3))
    assert torch.equal(again.query_x, batch.query_x)
    with pytest.raises(ValueError, match="1 to 24 images"):
        batches.sample(25, torch.Generator())


@pytest.mark.parametrize("cls", [Baseline, BaselinePlusPlus])
def test_training_lowers_the_loss_over_all_classes_and_refuses_episodes(cls):
    torch.manual_seed(0)
    learner = cls(Conv4(1, 8, norm="batch"), 8, 6)
    batches, g = ClassMiniBatches(_dataset()), torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.01)
    batch = batches.sample(24, g)
    losses = []
    for _ in range(15):
        loss, metrics = learner.meta_loss(batch)
        assert set(metrics) == {"loss", "accuracy"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="mini-batches of single labelled images"):
        learner.meta_loss(_episodes())


@pytest.mark.parametrize("cls", [Baseline, BaselinePlusPlus, EmbeddingLogisticRegression])
def test_a_new_head_separates_the_support_classes_and_each_task_gets_what_it_would_get_alone(cls):
    learner = cls(nn.Identity(), 10, 3).eval()
    tasks = _episodes()
    outputs = learner.predict(learner.adapt(tasks.support_x, tasks.support_y), tasks.query_x)
    assert outputs.shape == (3, 12, 4)
    assert (outputs.argmax(-1) == tasks.query_y).float().mean() == 1
    alone = learner.predict(learner.adapt(tasks.support_x[1:2], tasks.support_y[1:2]), tasks.query_x[1:2])
    torch.testing.assert_close(alone[0], outputs[1], rtol=1e-5, atol=1e-5)
    probabilities = learner.class_probabilities(outputs)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3, 12))


def test_baseline_pp_starts_from_the_class_means_of_unit_features():
    learner = BaselinePlusPlus(nn.Identity(), 10, 3, scale=5.0).eval()
    tasks = _episodes()
    outputs = learner.predict(learner.adapt(tasks.support_x, tasks.support_y, steps=0), tasks.query_x)
    z = F.normalize(tasks.support_x, dim=-1)
    means = torch.stack([z[:, tasks.support_y[0] == k].mean(1) for k in range(4)], 1)
    expected = 5.0 * F.normalize(tasks.query_x, dim=-1) @ F.normalize(means, dim=-1).transpose(1, 2)
    torch.testing.assert_close(outputs, expected)


def test_finetune_all_gives_each_task_its_own_encoder_and_leaves_the_trained_one_alone():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="channels-last"):
        Baseline(Conv4(1, 8, norm="batch", channels_last=True), 8, 6, finetune="all")
    learner = Baseline(Conv4(1, 8, norm="batch"), 8, 6, finetune="all", finetune_steps=3).eval()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    support, query = torch.rand(2, 4, 1, 16, 16, generator=g), torch.rand(2, 6, 1, 16, 16, generator=g)
    labels = torch.tensor([[0, 0, 1, 1]] * 2)
    adapted = learner.adapt(support, labels)
    assert all(p.shape[0] == 2 for p in adapted.encoder.values())
    moved = adapted.encoder["blocks.0.0.weight"] - learner.encoder.state_dict()["blocks.0.0.weight"]
    assert moved[0].abs().max() > 0 and not torch.equal(moved[0], moved[1])
    assert learner.predict(adapted, query).shape == (2, 6, 2)
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    alone = learner.predict(learner.adapt(support[1:], labels[1:]), query[1:])
    torch.testing.assert_close(alone[0], learner.predict(adapted, query)[1], rtol=1e-4, atol=1e-4)


def test_logistic_regression_finds_scikit_learns_optimum():
    sklearn = pytest.importorskip("sklearn.linear_model")
    learner = EmbeddingLogisticRegression(nn.Identity(), 10, 3)
    tasks = _episodes(tasks=2, n_way=5, shots=5)
    z = F.normalize(tasks.support_x.double(), dim=-1)
    weight, bias = learner.solve(z, F.one_hot(tasks.support_y, 5).double(), 500)
    for t in range(2):
        reference = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z[t].numpy(),
                                                                                      tasks.support_y[t].numpy())
        np.testing.assert_allclose(weight[t].numpy(), reference.coef_, atol=1e-4)
        centred = bias[t] - bias[t].mean()
        np.testing.assert_allclose(centred.numpy(), reference.intercept_ - reference.intercept_.mean(), atol=1e-4)


def _folder_cfg(root, tmp_path, **overrides):
    values = dict(algorithm="baseline", tasks="folder", data_root=str(root), image_size=16, conv_channels=8,
                  n_way=2, k_shot=1, eval_query=2, meta_batch_size=8, iterations=6, log_every=2, val_every=3,
                  checkpoint_every=3, val_tasks=4, test_tasks=4, finetune_steps=5, output_dir=str(tmp_path / "run"),
                  threads=1)  # the same thread count in every run compared (a convolution's sums split by thread)
    values.update(overrides)
    return Config(**values)


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    return write_glyph_folder(tmp_path_factory.mktemp("glyphs"), classes=10, images=4, side=16, ink_above=0.8,
                              flip_above=0.97, name="class{}")


def test_a_baseline_run_resumes_exactly_and_loads_without_its_data(glyphs, tmp_path):
    train(_folder_cfg(glyphs, tmp_path / "a"), progress=False)
    cfg = _folder_cfg(glyphs, tmp_path / "b", algorithm="baseline++")
    _, straight_pp = train(cfg.replace(output_dir=str(tmp_path / "c")), progress=False)
    tasks = build_tasks(cfg)
    assert isinstance(tasks, ClassMiniBatches) and tasks.output_size == 6  # 60% of the 10 classes train

    with pytest.raises(Killed), using_threads(1):
        Trainer(cfg, build_learner(cfg, tasks), tasks, progress=False, gradient_hook=kill_at(5)).fit()
    _, resumed = train(cfg, resume=True, progress=False)
    for key, value in straight_pp.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key

    moved = tmp_path / "gone"
    glyphs.rename(moved)  # the training data disappears: loading the run must not need it
    try:
        loaded_cfg, loaded = load_run(tmp_path / "a" / "run")
        assert loaded.weight.shape == (6, 8) and loaded_cfg.method.name == "baseline"
    finally:
        moved.rename(glyphs)
    assert torch.equal(loaded.weight, load_checkpoint(tmp_path / "a" / "run" / "best.pt")["learner"]["weight"])


def test_the_builder_gives_finetune_all_an_nchw_encoder_and_refuses_it_for_logreg(glyphs, tmp_path):
    cfg = _folder_cfg(glyphs, tmp_path, finetune="all")
    tasks = build_tasks(cfg)
    learner = build_learner(cfg, tasks)
    assert learner.finetune == "all" and learner.encoder.channels_last is False
    assert build_learner(cfg.replace(finetune="head"), tasks).encoder.channels_last is True
    assert build_learner(cfg.replace(algorithm="baseline++", cosine_scale=4.0), tasks).scale == 4.0
    with pytest.raises(ValueError, match="finetune 'all' is for baseline and baseline"):
        build_learner(cfg.replace(algorithm="logreg"), tasks)


def test_cross_domain_evaluation_leaves_out_the_ways_the_domain_cannot_serve_and_refuses_them_when_asked(
        fake_omniglot, tmp_path, capsys):
    """The ten digits cannot make 20-way episodes: a run evaluated at 5 and 20 ways gets its 5-way rows and a
    title that says 20-way was left out; asking for 20-way on digits is a one-line error."""
    pytest.importorskip("sklearn")
    from fastadapt.cli import main

    run = str(tmp_path / "run")
    train(Config(algorithm="protonet", tasks="omniglot", n_way=5, k_shot=1, num_query=2, eval_query=2,
                 eval_ways=[5, 20], conv_channels=8, iterations=2, val_tasks=2, test_tasks=2, threads=1,
                 output_dir=run), progress=False)
    assert main(["eval", run, "--tasks", "digits", "--test-tasks", "2"]) == 0
    out = capsys.readouterr().out
    assert "5-way 1-shot" in out and "20-way 1-shot" not in out and "20-way left out: digits has 10 test" in out
    assert main(["eval", run, "--tasks", "digits", "--test-tasks", "2", "--eval-ways", "20"]) == 2
    assert "--eval-ways 20: the test classes of digits are only 10" in capsys.readouterr().err
