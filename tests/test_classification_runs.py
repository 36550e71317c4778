"""Every method end to end through the CLI on image tasks: a synthetic folder dataset, and real Omniglot presets."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastadapt.cli import main
from fastadapt.config.presets import load_preset, preset_names
from fastadapt.config.schema import Config
from fastadapt.runs.directory import build_learner, evaluate_learner, fixed_batches, load_run
from fastadapt.training.builders import build_tasks, eval_settings
from fastadapt.training.evaluation import evaluate
from fastadapt.training.networks import resolve_norm

TINY = ["--iterations", "4", "--meta-batch-size", "2", "--log-every", "2", "--val-every", "2",
        "--checkpoint-every", "2", "--val-tasks", "4", "--test-tasks", "6", "--conv-channels", "8",
        "--no-progress", "--n-way", "3", "--k-shot", "1", "--num-query", "2", "--eval-query", "3"]


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile", "protonet", "matching",
                                       "mann", "snail", "metanet"])
def test_every_method_trains_and_evaluates_on_a_folder(glyph_folder, tmp_path, algorithm, capsys):
    run = tmp_path / algorithm
    assert main(["train", "--algorithm", algorithm, "--tasks", "folder", "--data-root", str(glyph_folder),
                 *TINY, "--eval-ways", "2", "3", "--eval-shots", "1", "2", "--eval-steps",
                 "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "trained 4 iterations" in out and f"norm: {resolve_norm(Config(algorithm=algorithm))}" in out
    for name in ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "learning_curves.png"):
        assert (run / name).exists(), name
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [2, 4]
    cfg, learner = load_run(run, "last")  # the logged validation score is the saved weights' score
    val = fixed_batches(build_tasks(cfg, "val"), cfg.training.val_tasks, "val",
                        shuffle_support=learner.reads_support_in_order)
    assert evaluate(learner, val)[None].mean == pytest.approx(log[-1]["val_accuracy"])

    assert main(["eval", str(run), "--json", "-"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    # Methods with a 3-way head or memory are evaluated 3-way only; SNAIL's sequence also fixes the shots.
    ways = ["2", "3"] if algorithm in ("protonet", "matching") else ["3"]
    shots = ["1"] if algorithm == "snail" else ["1", "2"]
    assert sorted(results) == sorted(f"{w}-way {s}-shot" for w in ways for s in shots)
    cfg, learner = load_run(run)  # the CLI's figures are the Python API's
    expected = evaluate_learner(cfg, learner)
    assert all(r["num_tasks"] == 6 and r["mean"] == pytest.approx(expected[row].mean) for row, r in results.items())


def test_knn_in_pixels_and_in_a_learned_embedding(glyph_folder, tmp_path, capsys):
    common = ["--tasks", "folder", "--data-root", str(glyph_folder), *TINY, "--eval-ways", "3", "--eval-shots", "1"]
    assert main(["train", "--algorithm", "knn", "--model", "pixels", *common, "--iterations", "0",
                 "--output-dir", str(tmp_path / "pixels")]) == 0
    out = capsys.readouterr().out
    assert "nothing trained" in out and "3-way 1-shot" in out and "raw pixels" in out and "norm:" not in out

    assert main(["train", "--algorithm", "protonet", *common, "--output-dir", str(tmp_path / "proto"),
                 "--no-eval"]) == 0
    assert main(["train", "--algorithm", "knn", "--encoder-from", str(tmp_path / "proto"), *common,
                 "--iterations", "0", "--output-dir", str(tmp_path / "embedded")]) == 0
    assert f"encoder from {tmp_path / 'proto'}" in capsys.readouterr().out

    assert main(["train", "--algorithm", "knn", *common, "--output-dir", str(tmp_path / "x")]) == 2
    assert "knn has nothing to train" in capsys.readouterr().err
    assert main(["train", "--algorithm", "knn", "--model", "pixels", *common,
                 "--output-dir", str(tmp_path / "y")]) == 2
    assert "run it with --iterations 0" in capsys.readouterr().err


def test_a_folder_with_split_subfolders_uses_them(glyph_folder, tmp_path, capsys):
    root = tmp_path / "data"
    for split, classes in (("train", range(0, 9)), ("val", range(9, 12)), ("test", range(12, 15))):
        for c in classes:
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / f"class{c:02d}").symlink_to(glyph_folder / f"class{c:02d}")
    assert main(["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(root), *TINY,
                 "--output-dir", str(tmp_path / "run")]) == 0
    assert "3-way 1-shot" in capsys.readouterr().out
    (root / "val").rename(root / "validation")
    assert main(["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(root), *TINY,
                 "--output-dir", str(tmp_path / "run2")]) == 2
    assert "no val/ one" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--algorithm", "protonet", "--tasks", "sinusoid"], "classifies images"),
    (["--algorithm", "protonet", "--tasks", "folder"], "needs data_root"),
    (["--algorithm", "protonet", "--tasks", "folder", "--data-root", "/nonexistent"], "does not exist"),
    (["--algorithm", "maml", "--tasks", "sinusoid", "--model", "conv4"], "needs image tasks"),
    (["--algorithm", "maml", "--tasks", "folder", "--model", "pixels"], "'pixels'"),
    (["--algorithm", "protonet", "--tasks", "folder", "--n-way", "20"], "need 20 classes, but the train classes of"),
    (["--algorithm", "protonet", "--tasks", "folder", "--k-shot", "9", "--num-query", "2"], "need 11 images"),
    (["--algorithm", "maml", "--tasks", "folder", "--eval-ways", "2"], "leave nothing to evaluate"),
    (["--algorithm", "protonet", "--tasks", "folder", "--channels", "2"], "channels must be 1"),
])
def test_bad_image_task_settings_give_one_clear_error(glyph_folder, tmp_path, argv, message, capsys):
    if "--data-root" not in argv and "folder" in argv and message != "needs data_root":
        argv = [*argv, "--data-root", str(glyph_folder)]
    assert main(["train", "--k-shot", "1", "--num-query", "2", *argv, "--iterations", "1",
                 "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_rotate_train_classes_multiplies_the_training_classes_only(glyph_folder):
    cfg = Config(algorithm="protonet", tasks="folder", data_root=str(glyph_folder), n_way=2, k_shot=1,
                 num_query=2, eval_query=2)
    rotated = cfg.replace(rotate_train_classes=True)
    assert build_tasks(rotated, "train").dataset.num_classes == 4 * build_tasks(cfg, "train").dataset.num_classes
    for split in ("val", "test"):
        assert build_tasks(rotated, split).dataset.num_classes == build_tasks(cfg, split).dataset.num_classes
    with pytest.raises(ValueError, match="already rotates"):
        build_tasks(Config(tasks="omniglot", dataset_split="vinyals", rotate_train_classes=True), "train")


def test_matching_cosine_scale_reaches_the_learner(glyph_folder):
    cfg = Config(algorithm="matching", tasks="folder", data_root=str(glyph_folder), n_way=2, k_shot=1,
                 num_query=2, eval_query=2)
    tasks = build_tasks(cfg, "train")
    assert build_learner(cfg, tasks).scale is None  # the paper's plain cosine
    assert build_learner(cfg.replace(cosine_scale=5.0), tasks).scale.item() == 5.0


def test_eval_settings_follow_what_each_method_can_serve():
    grid = dict(n_way=5, k_shot=1, eval_ways=[5, 20], eval_shots=[1, 5])
    assert eval_settings(Config(algorithm="protonet", **grid)) == [(5, 1), (5, 5), (20, 1), (20, 5)]
    assert eval_settings(Config(algorithm="maml", **grid)) == [(5, 1), (5, 5)]
    assert eval_settings(Config(algorithm="snail", **grid)) == [(5, 1)]
    assert eval_settings(Config(algorithm="protonet", n_way=60, k_shot=1)) == [(60, 1)]


def test_every_omniglot_preset_builds_and_states_its_protocol():
    names = [n for n in preset_names() if n.startswith("omniglot-")]
    assert {"omniglot-protonet", "omniglot-maml", "omniglot-matching", "omniglot-mann", "omniglot-snail",
            "omniglot-metanet", "omniglot-knn-pixels"} <= set(names)
    for name in names:
        cfg = load_preset(name)
        assert (cfg.task.family == "omniglot" and cfg.evaluation.test_tasks >= 600
                and cfg.evaluation.eval_query == 15), name
        assert eval_settings(cfg)[0][0] in (5, 20), name


@pytest.mark.parametrize("preset", ["omniglot-protonet", "omniglot-maml", "omniglot-snail"])
def test_omniglot_presets_run_on_the_real_data(omniglot_dir, tmp_path, preset, capsys):
    assert main(["train", preset, "--data-root", str(omniglot_dir), "--iterations", "2", "--meta-batch-size", "2",
                 "--n-way", "5", "--val-tasks", "4", "--val-every", "2", "--test-tasks", "4", "--conv-channels", "8",
                 "--output-dir", str(tmp_path / preset), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "5-way 1-shot" in out and "omniglot" in out


def test_the_omniglot_benchmark_script_runs_on_any_class_folder(glyph_folder, tmp_path):
    """benchmarks/omniglot.py end to end on a tiny budget, MANN's accuracy-by-instance protocol included."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "omniglot.py"
    settings = ["tasks=folder", f"data_root={glyph_folder}", "iterations=2", "n_way=3", "eval_ways=[3]",
                "eval_shots=[1]", "k_shot=1", "num_query=1", "test_tasks=4", "val_tasks=2", "val_every=2",
                "conv_channels=8", "eval_query=1"]
    done = subprocess.run([sys.executable, str(script), "omniglot-protonet", "omniglot-mann", "--set", *settings,
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "omniglot-protonet" in done.stdout and "3-way 1-shot" in done.stdout
    assert "accuracy by instance on 4 test sequences of 3 classes x 10: 1: " in done.stdout
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["preset"] for r in runs] == ["omniglot-protonet", "omniglot-mann", "omniglot-mann"]
