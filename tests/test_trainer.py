"""The training loop: exact resume after a kill, atomic checkpoints, clear errors."""
import json

import pytest
import torch

from fastadapt.runs.directory import build_learner

from fastadapt.config.presets import load_preset
from fastadapt.config.schema import Config
from fastadapt.runs.directory import train
from fastadapt.training.builders import build_tasks
from fastadapt.training.checkpoint import load_checkpoint, save_checkpoint
from fastadapt.training.trainer import NonFiniteLossError, Trainer
from run_helpers import Killed, kill_at, sinusoid_run  # the tests directory is on sys.path under pytest


def _final_params(learner):
    return {k: v.clone() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "reptile"])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, algorithm):
    _, straight = train(sinusoid_run(tmp_path / "a" / "run", algorithm=algorithm), progress=False)

    cfg = sinusoid_run(tmp_path / "b" / "run", algorithm=algorithm)
    tasks = build_tasks(cfg)
    learner = build_learner(cfg, tasks)
    trainer = Trainer(cfg, learner, tasks, progress=False, gradient_hook=kill_at(27))
    with pytest.raises(Killed):
        trainer.fit()
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["iteration"] == 20

    # A new process would rebuild everything from the config and resume from last.pt.
    torch.manual_seed(12345)  # resume must not depend on the global RNG state at restart
    _, resumed = train(cfg, resume=True, progress=False)
    a, b = _final_params(straight), _final_params(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(5, 41, 5))


def test_same_seed_same_numbers_different_seed_different(tmp_path):
    _, a = train(sinusoid_run(tmp_path / "a" / "run", iterations=10), progress=False)
    _, b = train(sinusoid_run(tmp_path / "b" / "run", iterations=10), progress=False)
    _, c = train(sinusoid_run(tmp_path / "c" / "run", iterations=10, seed=1), progress=False)
    w = "model.0.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_existing_run_is_not_overwritten_and_resume_checks_config(tmp_path):
    cfg = sinusoid_run(tmp_path / "run", iterations=10)
    train(cfg, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, progress=False)
    with pytest.raises(ValueError,
                       match=r"cannot resume .* with other inner_lr than it was started with \(inner_lr=0.01\)"):
        train(cfg.replace(inner_lr=0.5), resume=True, progress=False)
    result, _ = train(cfg.replace(iterations=15), resume=True, progress=False)
    assert result.iterations == 15


def test_nan_loss_raises_a_clear_error(tmp_path):
    cfg = sinusoid_run(tmp_path / "run", iterations=5)
    tasks = build_tasks(cfg)
    learner = build_learner(cfg, tasks)
    with torch.no_grad():
        learner.model[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="meta-loss is nan at iteration 0.*Lower meta_lr"):
        Trainer(cfg, learner, tasks, progress=False).fit()


def test_best_checkpoint_tracks_validation(tmp_path):
    cfg = sinusoid_run(tmp_path / "run", iterations=30)
    result, _ = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [r["val_mse"] for r in log if "val_mse" in r]
    assert len(scores) == 3 and result.best_score == min(scores)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["best_score"] == min(scores)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"learner": {}, "config": {}, "value": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"learner": {}, "config": {}, "value": 2})
    assert load_checkpoint(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_unreadable_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a fastadapt checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


@pytest.mark.parametrize("overrides, message", [
    ({"k_shot": 0}, "k_shot must be a positive integer"),
    ({"meta_lr": -1e-3}, "meta_lr must be a positive learning rate"),
    ({"inner_lr": -0.01}, "inner_lr must be a positive learning rate"),
    ({"meta_batch_size": 0}, "meta_batch_size must be a positive integer"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config(**overrides)


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm 'mamll'; choose one of"):
        build_learner(sinusoid_run(tmp_path / "run", algorithm="mamll"), build_tasks(sinusoid_run(tmp_path / "run")))
    with pytest.raises(ValueError, match="unknown task family"):
        build_tasks(sinusoid_run(tmp_path / "run", tasks="cosine"))
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_preset("nope")
    with pytest.raises(ValueError, match="unknown option"):
        Config.from_dict({"inner_lrr": 0.1})
