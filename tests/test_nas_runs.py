"""MetaNAS / T-NAS through the trainer and the CLI: exact resume of a search, architecture files, retraining a
found architecture (model darts), the plots of cells and per-task architectures, errors."""
import json

import pytest
import torch

from fastadapt.cli import main
from fastadapt.config.schema import Config
from fastadapt.models.darts import Genotype
from fastadapt.runs.directory import build_learner, train
from fastadapt.training.builders import build_tasks
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.threads import using_threads
from fastadapt.training.trainer import Trainer, build_optimizer
from run_helpers import Killed, kill_at  # the tests directory is on sys.path under pytest

SPACE = ["--cells", "2", "--nodes", "2", "--cell-channels", "4", "--stem-multiplier", "1",
         "--operations", "conv_3x3", "max_pool_3x3", "skip_connect", "zero"]
TINY = ["--tasks", "folder", "--n-way", "3", "--k-shot", "1", "--num-query", "2", "--eval-query", "3",
        "--iterations", "4", "--meta-batch-size", "2", "--log-every", "2", "--val-every", "2",
        "--checkpoint-every", "2", "--val-tasks", "4", "--test-tasks", "6", "--inner-steps", "2", "--no-progress",
        "--eval-steps"]


def _search_config(folder, run_dir, **overrides):
    values = dict(algorithm="metanas", tasks="folder", data_root=str(folder), n_way=3, k_shot=1, num_query=2,
                  eval_query=3, cells=2, nodes=2, cell_channels=4, stem_multiplier=1,
                  operations=["conv_3x3", "max_pool_3x3", "skip_connect", "zero"], inner_steps=2,
                  alpha_inner_lr=0.5, warmup_iterations=3, temperature_end=0.1, meta_batch_size=2, iterations=6,
                  log_every=2, val_every=3, checkpoint_every=2, val_tasks=4, test_tasks=6, meta_optimizer="sgd",
                  meta_lr=1.0, alpha_meta_lr=0.6, output_dir=str(run_dir),
                  threads=1)  # the same thread count in every run compared (a convolution's sums split by thread)
    values.update(overrides)
    return Config(**values)


def test_a_killed_search_resumes_exactly(glyph_folder, tmp_path):  # noqa: F811
    _, straight = train(_search_config(glyph_folder, tmp_path / "a"), progress=False)

    cfg = _search_config(glyph_folder, tmp_path / "b")
    tasks = build_tasks(cfg)
    # killed at iteration 5: after the warm-up ended at 3, after the checkpoint at 4
    trainer = Trainer(cfg, build_learner(cfg, tasks), tasks, progress=False, gradient_hook=kill_at(5))
    with pytest.raises(Killed), using_threads(1):
        trainer.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 4
    torch.manual_seed(12345)
    _, resumed = train(cfg, resume=True, progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and int(b["meta_iteration"]) == 6
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["model.alphas.reduce"], build_learner(cfg, tasks).state_dict()["model.alphas.reduce"])
    assert Genotype.load(tmp_path / "a" / "architecture.json") == Genotype.load(tmp_path / "b" / "architecture.json")


def test_architecture_weights_get_their_own_outer_learning_rate(glyph_folder, tmp_path):  # noqa: F811
    cfg = _search_config(glyph_folder, tmp_path)
    learner = build_learner(cfg, build_tasks(cfg))
    optimizer, _ = build_optimizer(cfg, learner)
    alphas = {id(p) for p in learner.architecture_parameters()}
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 0.6]
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == alphas
    assert len(optimizer.param_groups[0]["params"]) == len(list(learner.parameters())) - len(alphas)
    maml = cfg.replace(algorithm="maml", model="conv4", conv_channels=4)
    with pytest.raises(ValueError, match="alpha_meta_lr: algorithm 'maml' has no architecture weights"):
        build_optimizer(maml, build_learner(maml, build_tasks(maml)))


def test_search_plot_and_retrain_through_the_cli(glyph_folder, tmp_path, capsys):  # noqa: F811
    search = tmp_path / "search"
    assert main(["train", "--algorithm", "tnas", "--first-order", "--data-root", str(glyph_folder), *TINY, *SPACE,
                 "--alpha-inner-lr", "30", "--output-dir", str(search)]) == 0
    out = capsys.readouterr().out
    assert "trained 4 iterations" in out and "meta-architecture of the best checkpoint" in out
    assert "parameters" in out and "MFLOPs per image" in out and "3-way 1-shot" in out
    genotype = Genotype.load(search / "architecture.json")
    assert genotype.extras["search_space"]["cells"] == 2

    assert main(["plot", str(search), "--tasks", "6"]) == 0
    assert "task_architectures.png" in capsys.readouterr().out
    for name in ("cells.png", "task_architectures.png"):
        assert (search / name).stat().st_size > 5000, name

    retrain = tmp_path / "retrain"
    assert main(["train", "--algorithm", "fomaml", "--model", "darts", "--architecture", str(search),
                 "--data-root", str(glyph_folder), *TINY, *SPACE, "--output-dir", str(retrain)]) == 0
    out = capsys.readouterr().out
    assert f"architecture {search}" in out and "trained 4 iterations" in out
    saved = Config.load(retrain / "config.yaml")
    assert (saved.model.name, saved.model.architecture) == ("darts", str(search))
    # the discrete network holds only the chosen operations: none of the supernet's alphas
    assert not any("alphas" in key for key in load_checkpoint(retrain / "best.pt")["learner"])
    assert main(["eval", str(retrain), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["results"]["3-way 1-shot"]["num_tasks"] == 6
    assert main(["plot", str(retrain)]) == 0 and (retrain / "cells.png").exists()

    path = tmp_path / "arch.json"
    genotype.save(path)  # a JSON file works as well as a run directory, and the network embeds for ProtoNet too
    assert main(["train", "--algorithm", "protonet", "--model", "darts", "--architecture", str(path),
                 "--data-root", str(glyph_folder), *TINY, *SPACE, "--iterations", "2", "--no-eval",
                 "--output-dir", str(tmp_path / "from-json")]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--algorithm", "maml", "--model", "darts"], "model 'darts' needs --architecture"),
    (["--algorithm", "maml", "--model", "darts", "--architecture", "nowhere.json"], "nowhere.json does not exist"),
    (["--algorithm", "metanas", "--model", "conv4"], "its model is the DARTS supernet"),
    (["--algorithm", "maml", "--model", "supernet"], "model 'supernet' is searched by"),
    (["--algorithm", "metanas", "--operations", "conv_7x7"], "unknown operation"),
    (["--algorithm", "metanas", "--outer-update", "maml"], "outer_update must be reptile or fomaml"),
    (["--algorithm", "metanas", "--tasks", "sinusoid"], "model 'supernet' needs image tasks"),
])
def test_bad_settings_are_one_line_errors(glyph_folder, tmp_path, capsys, flags, message):  # noqa: F811
    args = ["train", "--data-root", str(glyph_folder), *TINY, "--output-dir", str(tmp_path / "x"), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_architecture_from_a_run_without_one(glyph_folder, tmp_path, capsys):  # noqa: F811
    (tmp_path / "empty").mkdir()
    assert main(["train", "--algorithm", "maml", "--model", "darts", "--architecture", str(tmp_path / "empty"),
                 "--data-root", str(glyph_folder), *TINY, "--output-dir", str(tmp_path / "x")]) == 2
    assert "architecture.json does not exist; a metanas / tnas run writes it" in capsys.readouterr().err
