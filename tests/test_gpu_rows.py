"""benchmarks/gpu_rows.py on the CPU with tiny budgets: the plan, a run stopped by the time limit and archived,
its resume from the archive to the end, the tests and their count, and the results file."""
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

from episode_helpers import write_glyph_folder

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_rows.py"


@pytest.fixture(scope="module")
def gpu_rows():
    spec = importlib.util.spec_from_file_location("gpu_rows", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_rows"] = module
    spec.loader.exec_module(module)
    return module


def _tiny(folder: Path, iterations: int) -> str:
    return shlex.join(["--tasks", "folder", "--data-root", str(folder), "--iterations", str(iterations),
                       "--conv-channels", "8", "--meta-batch-size", "2", "--val-every", "5", "--checkpoint-every", "5",
                       "--log-every", "5", "--val-tasks", "4", "--test-tasks", "4", "--eval-ways", "5",
                       "--eval-shots", "1", "--eval-query", "2"])


def test_a_stopped_row_is_archived_tested_cut_short_and_resumed_to_its_end(gpu_rows, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    folder = write_glyph_folder(tmp_path / "glyphs", classes=40, images=4)
    first, second = tmp_path / "out1", tmp_path / "out2"
    common = ["--device", "cpu", "--rows", "maml", "--min-row-minutes", "0.02", "--test-cut-short",
              "--archive-seconds", "1"]
    # far more iterations than the ~20 seconds of training hold: the time limit stops the run (25 s left for the
    # test: on a loaded machine the evaluation's start alone took 12 s)
    gpu_rows.main(["--minutes", "0.75", "--out", str(first), "--work", str(tmp_path / "a"), "--test-seconds", "25",
                   "--train-args", _tiny(folder, 100_000), *common])
    row, = json.loads((first / "gpu_rows.json").read_text())["rows"]
    assert 0 < row["iteration"] < row["iterations"] == 100_000 and not row["finished"]
    assert row["test_looks"] == 1 and row["test"]["iteration"] == row["iteration"]
    assert row["test"]["checkpoint"] == "best"
    assert row["test_set"] == {"family": "folder", "dataset_split": "maml", "episodes": 4, "queries_per_class": 2,
                               "version": 1, "ways": [5], "shots": [1]}
    assert row["train_command"].startswith("fastadapt train omniglot-maml --device cpu")
    assert "(cut short)" in (first / "gpu_rows.md").read_text()
    archive = first / "unfinished-maml.tar.gz"
    assert archive.exists()

    target = row["iteration"] + 3  # a resume may change the iterations
    gpu_rows.main(["--minutes", "3", "--out", str(second), "--work", str(tmp_path / "b"), "--test-seconds", "30",
                   "--resume-from", str(archive), "--train-args", _tiny(folder, target), *common])
    resumed, = json.loads((second / "gpu_rows.json").read_text())["rows"]
    assert resumed["train_command"].endswith("--resume") and resumed["train_exit_status"] == 0
    assert resumed["iteration"] == resumed["iterations"] == target and resumed["finished"]
    assert resumed["test_looks"] == 2 and resumed["test"]["iteration"] == target  # the cut-short look counted
    assert not (second / "unfinished-maml.tar.gz").exists()
    assert "5-way 1-shot" in (second / "gpu_rows.md").read_text() or resumed["test"]["results"]


def test_the_plan_keeps_the_priority_order_and_leaves_out_presets_not_shipped(gpu_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_rows, "ROWS", gpu_rows.ROWS + (("missing", "omniglot-no-such-preset", ()),))
    args = gpu_rows.argparse.Namespace(rows=["metanet", "maml", "missing", "matching"], parallel=2, device="cuda",
                                       data_root="data/omniglot", train_args=[])
    rows = gpu_rows.plan(args, tmp_path)
    assert [row.name for row in rows] == ["maml", "matching", "metanet"]
    assert gpu_rows.shown(rows[0].train).startswith("fastadapt train omniglot-maml --device cuda --threads ")
    assert all("--no-eval" in row.train and "--resume" not in row.train for row in rows)


def test_the_probe_times_eager_and_captured_steps_and_says_when_nothing_was_captured(gpu_rows, fake_omniglot,
                                                                                      one_thread):
    results = gpu_rows.speed_probe(None, "cpu", 1, settings=((2, 1, "fp32", "off"), (2, 1, "fp32", "on")),
                                   check_steps=1)
    assert [r["setting"] for r in results[:2]] == ["meta-batch 2, 1 query, fp32, eager",
                                                   "meta-batch 2, 1 query, fp32, captured"]
    assert all(r["ms_per_iteration"] > 0 and r["captured"] is False for r in results[:2])  # a CPU captures nothing
    check = results[2]
    assert check["setting"].startswith("captured against eager") and check["captured"] is False
    assert check["max_abs_difference"] == 0 < check["max_abs_weight"]  # both eager here: the same run
