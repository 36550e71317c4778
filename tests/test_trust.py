"""What decides whether a printed figure can be trusted: evaluation protocol, validation cadence, resume
rules, checks before training, and errors that say what is wrong."""
import json
import math

import pytest
import torch

from fastadapt.algorithms.base import RLMetaLearner
from fastadapt.algorithms.mann import MANN
from fastadapt.cli import main
from fastadapt.config.presets import load_preset, preset_names
from fastadapt.config.schema import Config, ConfigError
from fastadapt.datasets import ClassDataset
from fastadapt.runs.directory import build_learner, evaluate_learner, fixed_batches, load_run, train
from fastadapt.tasks import EpisodeTasks
from fastadapt.training.builders import build_tasks
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.checks import check_config
from fastadapt.training.evaluation import evaluate
from fastadapt.training.trainer import build_optimizer


def _sinusoid(tmp_path, **overrides):
    values = dict(algorithm="maml", tasks="sinusoid", k_shot=5, meta_batch_size=4, iterations=20, log_every=5,
                  val_every=10, checkpoint_every=10, val_tasks=20, test_tasks=20, output_dir=str(tmp_path / "run"))
    return Config(**{**values, **overrides})


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- 1. MANN is evaluated on support orders like the ones it trains on ---
def _episodes(classes=6, per_class=6):
    images = torch.arange(classes * per_class, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    dataset = ClassDataset(images, torch.arange(classes).repeat_interleave(per_class),
                           [f"c{i}" for i in range(classes)])
    return EpisodeTasks(dataset, n_way=3, k_shot=2, num_query=1)


def test_shuffled_support_keeps_the_episodes_and_fixes_one_random_order_each():
    tasks = _episodes()
    plain = tasks.fixed_tasks(40, split="test")
    shuffled = tasks.fixed_tasks(40, split="test", shuffle_support=True)
    assert plain.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert not all(y.tolist() == [0, 0, 1, 1, 2, 2] for y in shuffled.support_y)
    for a, b in ((plain, shuffled),):  # the same images with the same labels, in another order, queries untouched
        pairs = lambda batch, t: sorted(zip(batch.support_x[t, :, 0, 0, 0].tolist(), batch.support_y[t].tolist()))
        assert all(pairs(a, t) == pairs(b, t) for t in range(40))
        assert torch.equal(a.query_x, b.query_x) and torch.equal(a.query_y, b.query_y)
    chunked = torch.cat([b.support_y for b in tasks.iter_fixed_tasks(40, 7, split="test", shuffle_support=True)])
    assert torch.equal(chunked, shuffled.support_y)  # the order belongs to the episode, not to the chunking


def test_mann_evaluation_reads_the_support_set_in_random_order(monkeypatch, glyph_folder):
    cfg = Config(algorithm="mann", tasks="folder", data_root=str(glyph_folder), n_way=3, k_shot=2, num_query=1,
                 eval_query=1, test_tasks=8, conv_channels=8)
    learner = build_learner(cfg, build_tasks(cfg, "train"))
    orders = []
    original = MANN.adapt

    def spy(self, support_x, support_y, steps=None):
        orders.extend(support_y.tolist())
        return original(self, support_x, support_y, steps)

    monkeypatch.setattr(MANN, "adapt", spy)
    evaluate_learner(cfg, learner)
    assert len(orders) == 8 and any(order != sorted(order) for order in orders)


# --- 6. a test episode's statistics never come from other episodes ---
def test_transductive_norm_is_refused_for_learners_that_embed_many_episodes_at_once():
    with pytest.raises(ValueError, match="--norm transductive does not work with protonet"):
        check_config(Config(algorithm="protonet", tasks="sinusoid", model="conv4", norm="transductive"))
    with pytest.raises(ValueError, match="--norm batch does not work with maml"):
        check_config(Config(algorithm="maml", tasks="sinusoid", model="conv4", norm="batch"))


# --- 7. validation every val_every iterations, whatever log_every is ---
def test_validation_runs_exactly_every_val_every_iterations(tmp_path):
    train(_sinusoid(tmp_path, iterations=20, log_every=3, val_every=5, checkpoint_every=20), progress=False)
    records = _records(tmp_path / "run")
    assert [r["iteration"] for r in records if "val_mse" in r] == [5, 10, 15, 20]
    assert [r["iteration"] for r in records if "loss" in r] == [3, 6, 9, 12, 15, 18, 20]


# --- 8. resume without a checkpoint, and a new run over an old log ---
def test_resume_needs_a_checkpoint_and_a_new_run_never_appends_to_an_old_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume: .* holds no last.pt"):
        train(_sinusoid(tmp_path), resume=True, progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"iteration": 5, "loss": 1.0}\n')
    with pytest.raises(FileExistsError, match=r"already holds a run \(metrics.jsonl\)"):
        train(_sinusoid(tmp_path), progress=False)


# --- 9. resuming may not change what the best score was measured on ---
@pytest.mark.parametrize("change", [dict(val_tasks=30), dict(eval_inner_steps=3), dict(k_shot=3)])
def test_resume_refuses_settings_that_change_the_validation_episodes_or_the_weights(tmp_path, change):
    train(_sinusoid(tmp_path, iterations=10), progress=False)
    with pytest.raises(ValueError, match=f"cannot resume .* with other {next(iter(change))}"):
        train(_sinusoid(tmp_path, iterations=20, **change), resume=True, progress=False)


def test_resume_may_change_the_budget_and_the_test_settings(tmp_path):
    train(_sinusoid(tmp_path, iterations=10), progress=False)
    result, _ = train(_sinusoid(tmp_path, iterations=20, test_tasks=50, eval_steps=[0, 3]), resume=True,
                      progress=False)
    assert result.iterations == 20


def test_folder_data_root_may_not_change_on_resume_but_omniglot_may(tmp_path, glyph_folder):
    cfg = Config(algorithm="protonet", tasks="folder", data_root=str(glyph_folder), n_way=2, k_shot=1, num_query=2,
                 eval_query=2, iterations=2, val_tasks=2, test_tasks=2, conv_channels=8,
                 output_dir=str(tmp_path / "run"))
    train(cfg, progress=False)
    with pytest.raises(ValueError, match="with other data_root"):
        train(cfg.replace(data_root=str(tmp_path), iterations=4), resume=True, progress=False)


# --- 10. what cannot be evaluated is refused before training ---
def test_evaluation_settings_are_checked_before_the_first_iteration(tmp_path, glyph_folder):
    cfg = Config(algorithm="protonet", tasks="folder", data_root=str(glyph_folder), n_way=2, k_shot=1, num_query=2,
                 eval_query=2, eval_ways=[2, 5], iterations=2, conv_channels=8, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"5-way test episodes \(--n-way / --eval-ways\) need 5 classes"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


# --- 11. impossible settings are one-line errors ---
def test_negative_evaluation_steps_are_refused():
    with pytest.raises(ConfigError, match="eval_inner_steps must be >= 0"):
        Config(eval_inner_steps=-1)


# --- 12. the demo never reports an old run as a new one ---
def test_demo_reuses_only_an_identical_run_and_refuses_other_settings(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--iterations", "20", "--output-dir", out, "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert main(["demo", "--iterations", "20", "--output-dir", out, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "reusing the finished run" in captured.err and captured.out.split("figure")[0] == first.split("figure")[0]
    assert main(["demo", "--iterations", "30", "--output-dir", out, "--no-progress"]) == 2
    assert "holds a demo run with other settings (iterations" in capsys.readouterr().err
    assert Config.load(tmp_path / "demo" / "maml" / "config.yaml").training.iterations == 20
    assert main(["demo", "--iterations", "30", "--output-dir", out, "--no-progress", "--overwrite"]) == 0
    saved = Config.load(tmp_path / "demo" / "maml" / "config.yaml").training.iterations
    assert saved == load_checkpoint(tmp_path / "demo" / "maml" / "last.pt")["iteration"] == 30


# --- 13. a resumed run's clock keeps counting ---
def test_seconds_are_cumulative_across_a_resume(tmp_path):
    train(_sinusoid(tmp_path, iterations=10), progress=False)
    before = _records(tmp_path / "run")[-1]["seconds"]
    # the log rounds to the millisecond (0.07499 s is logged as 0.075), the checkpoint keeps the clock as it was
    assert load_checkpoint(tmp_path / "run" / "last.pt")["seconds"] >= before - 0.0005 and before > 0
    train(_sinusoid(tmp_path, iterations=20), resume=True, progress=False)
    after = [r["seconds"] for r in _records(tmp_path / "run") if r["iteration"] > 10]
    assert after and min(after) > before


# --- 15. user and environment errors reach the terminal as one line ---
@pytest.mark.parametrize("device, message", [("foo", "unknown device 'foo'"), ("tpu", "unknown device 'tpu'")])
def test_bad_devices_are_one_line_errors(tmp_path, device, message, capsys):
    assert main(["train", "sinusoid-maml", "--iterations", "1", "--device", device, "--no-progress",
                 "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastadapt: error: {message}") and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "sinusoid-maml", "--iterations", "1", "--device", "cuda", "--no-progress",
                 "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "has no CUDA GPU; use --device cpu" in err and err.count("\n") == 1


def test_download_and_worker_failures_are_one_line_errors(tmp_path, monkeypatch, capsys, data_cache):
    from fastadapt.datasets import omniglot
    from fastadapt.datasets.download import DownloadError
    from fastadapt.training import distributed

    def offline(url, destination, md5=None):
        raise DownloadError(f"could not download {url}: no network")

    monkeypatch.setattr(omniglot, "download_file", offline)
    assert main(["train", "omniglot-protonet", "--iterations", "1", "--no-progress",
                 "--output-dir", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.startswith("fastadapt: error: could not download")

    def dead_worker(*args, **kwargs):
        raise distributed.WorkerError("a training process failed: process 1 terminated with signal SIGKILL")

    monkeypatch.setattr(distributed, "spawn", dead_worker)
    assert main(["train", "sinusoid-maml", "--iterations", "2", "--meta-batch-size", "4", "--nproc", "2",
                 "--no-progress", "--output-dir", str(tmp_path / "b")]) == 2
    assert "fastadapt: error: a training process failed" in capsys.readouterr().err


# --- 16. every shipped preset builds, and its learner takes a step ---
@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_builds_and_takes_a_step(name, fake_omniglot, tmp_path):
    cfg = load_preset(name).replace(output_dir=str(tmp_path / "run"))
    check_config(cfg)
    tasks = build_tasks(cfg, "train")
    learner = build_learner(cfg, tasks)
    if isinstance(learner, RLMetaLearner):  # its own update (TRPO / PPO) on one task of the preset's sizes
        if any(p.requires_grad for p in learner.parameters()):
            before = [p.detach().clone() for p in learner.parameters()]
            optimizer, _ = build_optimizer(cfg.resolved(), learner)
            metrics = learner.meta_update(tasks.sample(1, torch.Generator().manual_seed(0)), optimizer)
            assert math.isfinite(metrics["return"])
            assert any(not torch.equal(b, p) for b, p in zip(before, learner.parameters()))
    elif any(p.requires_grad for p in learner.parameters()):
        # two tasks: on one, a confident right answer may round its loss to 0 (instance-protonet's first canvas:
        # the target nearer than the others by 35 nats at initialisation)
        loss, metrics = learner.meta_loss(tasks.sample(2, torch.Generator().manual_seed(0)))
        loss.backward()
        assert math.isfinite(loss.item()) and metrics["loss"] > 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    build_tasks(cfg, "val"), build_tasks(cfg, "test")


def test_a_loaded_run_scores_what_its_best_checkpoint_scored(tmp_path):
    cfg = _sinusoid(tmp_path, iterations=20)
    result, _ = train(cfg, progress=False)
    loaded_cfg, learner = load_run(tmp_path / "run")
    assert not learner.training  # ready for inference
    val = fixed_batches(build_tasks(loaded_cfg, "val"), loaded_cfg.training.val_tasks, "val")
    assert evaluate(learner, val)[None].mean == pytest.approx(result.best_score, rel=1e-6)
