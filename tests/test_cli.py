"""End-to-end runs of every CLI command on tiny budgets."""
import json
import subprocess
import sys

import pytest
import torch

from fastadapt.cli import main

TINY = ["--iterations", "20", "--meta-batch-size", "4", "--log-every", "5", "--val-every", "10",
        "--checkpoint-every", "10", "--val-tasks", "10", "--test-tasks", "20", "--no-progress"]


def test_train_eval_plot_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid-maml", *TINY, "--output-dir", str(run), "--eval-steps", "0", "1", "5"]) == 0
    out = capsys.readouterr().out
    assert "trained 20 iterations" in out and "5 steps" in out
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "learning_curves.png"):
        assert (run / name).exists(), name

    assert main(["eval", str(run), "--json", str(tmp_path / "r.json"), "--steps", "0", "1"]) == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert set(payload["results"]) == {"0 steps", "1 step"}
    assert payload["results"]["1 step"]["num_tasks"] == 20 and payload["config"]["method"]["name"] == "maml"
    assert "1 step" in capsys.readouterr().out

    assert main(["eval", str(run), "--json", "-", "--test-tasks", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["results"]["0 steps"]["num_tasks"] == 30

    assert main(["plot", str(run), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000

    args = ["train", "sinusoid-maml", *TINY, "--output-dir", str(run), "--no-eval"]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    args[args.index("20")] = "30"
    assert main([*args, "--resume"]) == 0
    assert "trained 30 iterations" in capsys.readouterr().out


@pytest.mark.parametrize("algorithm", ["fomaml", "metasgd", "reptile", "pretrained"])
def test_train_every_sinusoid_algorithm(tmp_path, algorithm, capsys):
    run = tmp_path / algorithm
    assert main(["train", "--algorithm", algorithm, "--k-shot", "5", *TINY, "--eval-steps", "0", "1",
                 "--output-dir", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "MSE" in printed
    recorded = json.loads((run / "test_results.json").read_text())["results"]
    # the table shows the recorded test figures, and fastadapt eval measures the same on the same tasks
    for row, estimate in recorded.items():
        assert f"{row}  " in printed and f"{estimate['mean']:.4f} ± {estimate['ci95']:.4f}" in printed, row
    assert main(["eval", str(run), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == recorded
    assert recorded["0 steps"]["num_tasks"] == 20 and recorded["0 steps"]["mean"] > 0


def test_init_from_starts_a_new_run_from_another_runs_best_weights(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "sinusoid-maml", *TINY, "--output-dir", str(first), "--no-eval"]) == 0
    assert main(["train", "sinusoid-maml", *TINY, "--iterations", "1", "--meta-lr", "1e-12",
                 "--output-dir", str(second), "--no-eval", "--init-from", str(first)]) == 0
    started, continued = (torch.load(run / name, weights_only=False)["learner"]
                          for run, name in ((first, "best.pt"), (second, "last.pt")))
    # one step at a negligible learning rate: the new run holds the first run's best weights
    for name, value in started.items():
        torch.testing.assert_close(continued[name], value, rtol=0, atol=1e-9)
    capsys.readouterr()

    assert main(["train", "sinusoid-maml", *TINY, "--hidden-sizes", "8", "--output-dir", str(tmp_path / "x"),
                 "--init-from", str(first)]) == 2
    err = capsys.readouterr().err
    assert "do not fit this MAML: the networks differ" in err and "Traceback" not in err
    assert main(["train", "sinusoid-maml", *TINY, "--output-dir", str(tmp_path / "y"),
                 "--init-from", str(tmp_path / "nowhere")]) == 2
    assert "init_from:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "nope"], "unknown preset 'nope'"),
    (["train", "--algorithm", "mamll"], "unknown algorithm 'mamll'"),
    (["train", "--k-shot", "0"], "k_shot must be a positive integer"),
    (["train", "--inner-lr", "-0.5"], "inner_lr must be a positive learning rate"),
    (["train", "rl-nav2d-maml", "--balanced-directions"], "balanced directions are for the forward/backward "
                                                          "families, not nav2d"),
    (["eval", "/nonexistent/run"], "does not exist"),
])
def test_bad_input_gives_one_clear_error(argv, message, capsys, tmp_path):
    assert main([*argv, *(["--output-dir", str(tmp_path / "x")] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_of_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"\x00garbage")
    assert main(["eval", str(run)]) == 2
    assert "unreadable or corrupt" in capsys.readouterr().err


def test_presets_and_console_script(capsys):
    assert main(["presets"]) == 0
    assert "sinusoid-maml" in capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "fastadapt", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in done.stdout and "train" in done.stdout


def test_demo_tiny_budget(tmp_path, capsys):
    assert main(["demo", "--iterations", "40", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MAML" in out and "pretrained" in out and "10 steps" in out
    assert (tmp_path / "sinusoid.png").stat().st_size > 10_000
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["MAML"]["1 step"]["num_tasks"] == 1000


def test_the_demo_tests_the_best_validation_weights_fresh_or_reused(tmp_path, monkeypatch):
    """A fresh demo and a re-run that reuses its runs print the same table: both test best.pt, as the README says."""
    from fastadapt.runs import demo

    configs = demo.demo_configs

    def validating_often(output_dir, iterations, seed):  # a validation every iteration, and a rough outer step
        return {name: cfg.replace(val_every=1, checkpoint_every=1, log_every=1, meta_lr=0.3, test_tasks=50)
                for name, cfg in configs(output_dir, iterations, seed).items()}

    monkeypatch.setattr(demo, "demo_configs", validating_often)
    fresh = demo.run_demo(tmp_path, iterations=12, progress=False)
    best, last = (torch.load(tmp_path / "maml" / name, weights_only=False)["iteration"]
                  for name in ("best.pt", "last.pt"))
    assert best != last  # else this test could not tell the two apart
    reused = demo.run_demo(tmp_path, iterations=12, progress=False)
    assert fresh["table"] == reused["table"]
