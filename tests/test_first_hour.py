"""A new user's first hour: thread counts, Ctrl-C that saves, a CLI that explains itself, errors that name
the setting, defaults that fit a small folder, a loaded model ready for inference, readable figures."""
import argparse
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastadapt.cli import build_parser, main
from fastadapt.config.schema import Config
from fastadapt.plots import _iterations
from fastadapt.runs.directory import train
from fastadapt.training import threads
from fastadapt.training.trainer import Trainer


# --- 1. threads per workload ---
def test_small_networks_run_on_one_thread_and_larger_ones_on_the_idle_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 3)
    assert threads.choose_threads(Config(), "mlp")[0] == 1
    assert threads.choose_threads(Config(), "conv4") == (5, "8 cores, about 3 busy with other work; --threads N "
                                                             "to change")
    monkeypatch.setattr(threads, "busy_cores", lambda: 20)
    assert threads.choose_threads(Config(), "conv4")[0] == 1
    assert threads.choose_threads(Config(threads=6), "mlp") == (6, "as --threads asked")


def test_a_run_says_how_many_threads_it_uses_and_restores_the_setting(tmp_path, capsys):
    before = torch.get_num_threads()
    train(Config(tasks="sinusoid", iterations=2, meta_batch_size=2, val_tasks=2, test_tasks=2,
                 output_dir=str(tmp_path / "run")), progress=False)
    assert "fastadapt: 1 thread (a small mlp network" in capsys.readouterr().err
    assert torch.get_num_threads() == before


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, capsys):
    """Another count splits a convolution's sums otherwise, so the resumed weights would differ in their last bits."""
    cfg = Config(tasks="sinusoid", iterations=4, meta_batch_size=2, val_tasks=2, test_tasks=2, checkpoint_every=2,
                 output_dir=str(tmp_path / "run"))
    train(cfg.replace(iterations=2, threads=2), progress=False)
    train(cfg, resume=True, progress=False)
    assert "fastadapt: 2 threads (as the run was started, so it continues exactly" in capsys.readouterr().err


# --- 2. SIGINT saves and says how to continue ---
def test_sigint_saves_last_checkpoint_exits_130_and_resume_continues_from_there(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "fastadapt", "train", "sinusoid-maml", "--iterations", "1000000",
               "--checkpoint-every", "1000000", "--log-every", "10", "--val-every", "1000000", "--no-progress",
               "--output-dir", str(run)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline and process.poll() is None, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    from fastadapt.training.checkpoint import load_checkpoint
    stopped = load_checkpoint(run / "last.pt")["iteration"]
    assert stopped >= 10
    assert f"last.pt holds iteration {stopped}" in err and "--resume" in err and "Traceback" not in err
    assert main(["train", "sinusoid-maml", "--iterations", str(stopped + 5), "--checkpoint-every", "1000000",
                 "--log-every", "10", "--val-every", "1000000", "--no-progress", "--no-eval",
                 "--output-dir", str(run), "--resume"]) == 0
    assert load_checkpoint(run / "last.pt")["iteration"] == stopped + 5


def test_sigterm_during_a_run_saves_at_the_end_of_the_step(tmp_path):
    cfg = Config(tasks="sinusoid", k_shot=5, meta_batch_size=2, iterations=50, val_tasks=2, test_tasks=2,
                 checkpoint_every=1000, output_dir=str(tmp_path / "run"))
    from fastadapt.runs.directory import build_learner
    from fastadapt.training.builders import build_tasks
    from fastadapt.training.trainer import TrainingInterrupted
    tasks = build_tasks(cfg)
    trainer = Trainer(cfg, build_learner(cfg, tasks), tasks, progress=False)
    original = trainer.step

    def step_then_signal(batch):
        metrics = original(batch)
        if trainer.iteration == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    trainer.step = step_then_signal
    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 7; last.pt holds iteration 7"):
        trainer.fit()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed again


# --- 3. every flag explains itself ---
def _subcommands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["demo", "train", "eval", "plot", "presets", "bench", "segment", "detect"])
def test_every_flag_of_every_subcommand_has_a_help_line_with_its_default(command):
    parser = _subcommands(build_parser())[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = f"{command} {action.option_strings or action.dest}"
        assert action.help, name
        assert action.required or "default" in action.help, name  # a required argument has no default


def test_a_bad_value_is_one_line_not_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--meta-lr", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "fastadapt train: error: argument --meta-lr: invalid float value: 'abc' " \
                  "(see 'fastadapt train --help')\n"


def test_presets_lists_each_with_a_training_time_estimate(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "training time" in lines[0]
    assert all(line.rstrip().endswith(("s", "min", "h", "not measured", "no training")) for line in lines[1:])
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["omniglot-knn-pixels"].endswith("no training") and rows["sinusoid-maml"].rstrip().endswith("min")


# --- 4. errors name the setting the number came from, names before numbers ---
def test_a_misspelled_algorithm_is_reported_before_any_size_problem(tmp_path, capsys, glyph_folder):
    assert main(["train", "--algorithm", "protonets", "--tasks", "folder", "--data-root", str(glyph_folder),
                 "--k-shot", "50", "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown algorithm 'protonets' (--algorithm): did you mean 'protonet'?" in err


def test_too_many_ways_for_a_folder_explain_its_split(tmp_path, capsys, glyph_folder):
    assert main(["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(glyph_folder),
                 "--n-way", "500", "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "500-way train episodes (--n-way) need 500 classes" in err and "split 60/20/20" in err


def test_too_few_images_for_the_queries_names_the_query_settings(tmp_path, capsys, glyph_folder):
    assert main(["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(glyph_folder),
                 "--n-way", "2", "--k-shot", "3", "--num-query", "5", "--output-dir", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "val episodes of 3 shots (--k-shot / --eval-shots) and 15 queries per class (--eval-query)" in err


# --- 5. folder runs: scaled defaults, and a word when validation stalls ---
def test_defaults_scale_with_the_budget_and_the_task_family():
    folder = Config(tasks="folder", iterations=300).resolved().training
    assert (folder.meta_batch_size, folder.log_every, folder.val_every) == (4, 3, 15)
    sinusoid = Config(tasks="sinusoid", iterations=70_000).resolved().training
    assert (sinusoid.meta_batch_size, sinusoid.log_every, sinusoid.val_every) == (25, 100, 1000)
    assert Config(tasks="folder", iterations=300, val_every=7).resolved().training.val_every == 7


def test_stalled_validation_with_rising_training_accuracy_is_pointed_out(tmp_path, glyph_folder, capsys):
    cfg = Config(algorithm="protonet", tasks="folder", data_root=str(glyph_folder), n_way=2, k_shot=1, num_query=2,
                 eval_query=2, iterations=12, log_every=1, val_every=1, val_tasks=2, test_tasks=2, conv_channels=8,
                 output_dir=str(tmp_path / "run"))
    from fastadapt.runs.directory import build_learner
    from fastadapt.training.builders import build_tasks
    tasks = build_tasks(cfg)
    trainer = Trainer(cfg, build_learner(cfg, tasks), tasks, val_batches=lambda: [], progress=False)
    scores = iter([0.6, 0.7] + [0.65] * 20)
    trainer.validate = lambda: next(scores)
    trainer.step = lambda batch: {"loss": 0.01, "accuracy": 1.0}
    trainer.fit()
    err = capsys.readouterr().err
    assert "validation accuracy has not improved since iteration 2 (best 0.700) while training accuracy is 1.000" \
        in err and err.count("has not improved") == 1


# --- 8. figures that read well ---
def test_iteration_ticks_stay_short():
    assert [_iterations(v, 0) for v in (500, 2500, 17500, 1_200_000)] == ["500", "2.5k", "17.5k", "1.2M"]


def test_learning_curves_name_what_they_show(tmp_path, monkeypatch):
    from fastadapt import plots
    records = [{"iteration": i, "loss": 1.0 / i, "accuracy": 0.5, "lr": 1e-3, "seconds": i} for i in range(1, 4)]
    records[-1]["val_accuracy"] = 0.4
    drawn, finish = [], plots._finish
    monkeypatch.setattr(plots, "_finish", lambda fig, path, **kw: drawn.append(fig) or finish(fig, path, **kw))
    path = plots.plot_learning_curves(records, tmp_path / "curves.png", title="maml on omniglot",
                                      subtitle="train: 60-way 5-shot, val: 5-way 1-shot")
    assert path.stat().st_size > 5000
    (figure,) = drawn
    axes = figure.axes
    assert [ax.get_title().replace("\n", " ") for ax in axes] == [
        plots.TITLES["loss"], plots.TITLES["accuracy"], plots.TITLES["val_accuracy"]]
    assert all(ax.get_xlabel() == "meta-iteration" for ax in axes)
    assert figure._suptitle.get_text() == "maml on omniglot\ntrain: 60-way 5-shot, val: 5-way 1-shot"
    loss, accuracy, validation = (ax.lines[0].get_xydata().tolist() for ax in axes)  # the records, point for point
    assert loss == [[i, 1.0 / i] for i in range(1, 4)] and accuracy == [[i, 0.5] for i in range(1, 4)]
    assert validation == [[3, 0.4]] and axes[0].get_yscale() == "log"
