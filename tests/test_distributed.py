"""Distributed meta-training: 2 gloo processes with meta-batch 4 each equal 1 process with meta-batch 8."""
import json
import os
import shutil
import re
import subprocess
import sys

import pytest

from fastadapt.cli import main
from fastadapt.config.schema import Config
from fastadapt.runs.directory import train
from fastadapt.training.checkpoint import load_checkpoint
from run_helpers import sinusoid_run  # the tests directory is on sys.path under pytest

ARGS = ["--algorithm", "maml", "--tasks", "sinusoid", "--k-shot", "5", "--meta-batch-size", "8",
        "--log-every", "5", "--val-every", "10", "--checkpoint-every", "10", "--val-tasks", "20",
        "--test-tasks", "20", "--device", "cpu", "--no-progress", "--no-eval"]


def _max_difference(learner, checkpoint):
    """Largest difference between a learner's weights and those saved in a checkpoint."""
    a, b = learner.state_dict(), load_checkpoint(checkpoint)["learner"]
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_process_and_resume(tmp_path, capsys):
    _, single = train(sinusoid_run(tmp_path / "single", meta_batch_size=8, iterations=20, device="cpu"), progress=False)

    # 10 iterations launched the documented way (torchrun, no --nproc) ...
    run = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "fastadapt", "train", *ARGS, "--iterations", "10", "--output-dir", str(run)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "terminate called" in done.stderr and "(SIGABRT)" in done.stderr:
        # a rank aborted in C++ (gloo), not with a Python error: seen once in about 30 launches on this machine
        # (upstream: pytorch/pytorch#188266, gloo aborting while connecting). Launch once more; any other
        # failure, or this one twice, fails the test.
        shutil.rmtree(run, ignore_errors=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 10 iterations") == 1  # rank 0 alone reports
    assert len(load_checkpoint(run / "last.pt")["rng_per_rank"]) == 2

    # ... then resumed to 20 with processes spawned by --nproc 2.
    assert main(["train", *ARGS, "--iterations", "20", "--output-dir", str(run), "--resume", "--nproc", "2"]) == 0
    assert "trained 20 iterations" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pt")["iteration"] == 20
    assert _max_difference(single, run / "last.pt") < 1e-6

    # rank 0 alone writes the log, and the logged losses are means over all 8 tasks
    ours, theirs = _log(tmp_path / "single"), _log(run)
    assert [r["iteration"] for r in theirs] == [r["iteration"] for r in ours] == [5, 10, 15, 20]
    for a, b in zip(ours, theirs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert ("val_mse" in a) == ("val_mse" in b) == (a["iteration"] % 10 == 0)
        if "val_mse" in a:
            assert a["val_mse"] == pytest.approx(b["val_mse"], rel=1e-5)


def test_uneven_split_is_a_clear_error(tmp_path, capsys):
    assert main(["train", *ARGS, "--meta-batch-size", "5", "--nproc", "2", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "meta_batch_size 5 does not split evenly over 2 processes" in err and "Traceback" not in err


def test_nproc_must_agree_with_the_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="disagrees with the launcher's WORLD_SIZE=3"):
        train(sinusoid_run(tmp_path, meta_batch_size=4, iterations=1, device="cpu"), nproc=2)


def test_maml_rl_on_two_processes_takes_the_one_process_trpo_steps(tmp_path):
    """TRPO's gradient, Fisher-vector products and line-search values are averaged over the processes. With
    the papers' damping (1e-5) the conjugate gradient of so small a problem turns rounding into visibly different
    steps (even reordering the tasks in one process does), so this compares at a damping of 0.1."""
    cfg = Config(algorithm="maml-rl", tasks="nav2d", horizon=8, trajectories=4, meta_batch_size=4, hidden_sizes=[16],
                 cg_damping=0.1, iterations=3, log_every=1, val_every=3, val_tasks=2, test_tasks=2, device="cpu",
                 threads=1)
    _, single = train(cfg.replace(output_dir=str(tmp_path / "one")), progress=False)
    train(cfg.replace(output_dir=str(tmp_path / "two")), progress=False, nproc=2)
    assert _max_difference(single, tmp_path / "two" / "last.pt") < 1e-4  # weights of order 1
    ours, theirs = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):  # the logged figures are means over all 4 tasks, and the steps the same
        assert a["backtracks"] == b["backtracks"]
        for key in ("return", "return_pre_update", "kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores for the thread count to tell")
def test_the_scaling_benchmark_runs_the_threads_it_prints(monkeypatch, capsys):
    """benchmarks/distributed.py once printed cores / N threads while the run chose its own (1 for an MLP)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "distributed_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "distributed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    used = []
    real = bench.load_checkpoint
    monkeypatch.setattr(bench, "load_checkpoint", lambda path: used.append(real(path)["threads"]) or real(path))
    monkeypatch.setattr(sys, "argv", ["distributed.py", "--preset", "sinusoid-maml", "--iterations", "2",
                                      "--meta-batch-size", "4", "--nproc", "1"])
    bench.main()
    printed = int(re.search(r"1 process\(es\), (\d+) thread\(s\) each", capsys.readouterr().out)[1])
    assert used == [printed] and printed == os.cpu_count()
