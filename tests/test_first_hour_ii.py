"""A new user's first hour, part II: the Python API on the threads the command line chooses, evaluation that
shows progress, labels that say what they measure, errors that say what to do."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fastadapt import threads
from fastadapt.cli import _config_from_args, build_parser, main, preset_timings, quick_config
from fastadapt.config.presets import load_preset
from fastadapt.config.schema import Config
from fastadapt.runs.directory import build_learner, evaluate_learner, train
from fastadapt.training.builders import build_tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_python(code: str) -> str:
    """stdout of ``code`` in a new interpreter on torch's own thread count (no OMP_NUM_THREADS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.path.join(ROOT, "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- 1. the Python API chooses threads as the command line does ---
@pytest.mark.skipif(threads.available_cores() < 2, reason="one core: torch's default is one thread already")
def test_the_readme_learners_run_on_one_thread_unless_the_user_chose():
    out = _fresh_python(
        "import torch\n"
        "from fastadapt.algorithms import MAML, MAMLRL\n"
        "from fastadapt.models import MLP, Conv4, GaussianMLPPolicy\n"
        "from fastadapt.tasks import Navigation2DTasks\n"
        "default = torch.get_num_threads()\n"
        "MAML(MLP(), loss='mse', inner_lr=0.01); print(torch.get_num_threads())\n"
        "Conv4(); print(torch.get_num_threads() == default)\n"
        "MAMLRL(GaussianMLPPolicy(Navigation2DTasks().spaces)); print(torch.get_num_threads())\n"
        "torch.set_num_threads(default + 1); MLP(); print(torch.get_num_threads() == default + 1)\n")
    assert out.split() == ["1", "True", "1", "True"]


def test_evaluate_learner_runs_on_the_threads_train_would_choose(tmp_path, monkeypatch):
    cfg = Config(tasks="sinusoid", iterations=1, meta_batch_size=2, val_tasks=2, test_tasks=4,
                 output_dir=str(tmp_path / "run"))
    _, learner = train(cfg, progress=False)
    seen = []
    import fastadapt.runs.directory as runs
    original = runs.evaluate

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(runs, "evaluate", recording)
    with threads.using_threads(2):
        evaluate_learner(cfg, learner)
        assert torch.get_num_threads() == 2
    assert seen == [1]


def _api_benchmark():
    """benchmarks/api_threads.py, which times the README's Python loops against `fastadapt train`."""
    spec = importlib.util.spec_from_file_location("api_threads", os.path.join(ROOT, "benchmarks", "api_threads.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings(thing) -> dict:
    """An object's plain attributes (a learner's or task family's settings, not its submodules or weights)."""
    return {name: value for name, value in vars(thing).items() if not name.startswith("_") and name != "training"}


@pytest.mark.parametrize("workload", ["maml", "rl"])
def test_the_api_benchmark_times_the_readme_block_against_a_command_line_doing_the_same_work(workload):
    """The README block's learner, task family and meta-batch are the ones its command line builds (the RL block's
    2 x 100 policy once ran against the command line's default 2 x 40: a 4x 'gap' that was a third of the work)."""
    benchmark = _api_benchmark()
    _, _, argv, _ = benchmark.WORKLOADS[workload]
    block: dict = {}
    exec(benchmark.readme_loop(workload, 0), block)  # everything before the loop, as written
    cfg = _config_from_args(build_parser().parse_args(argv)).resolved()  # as train resolves it
    tasks = build_tasks(cfg, "train")
    learner = build_learner(cfg, tasks)
    assert type(block["tasks"]) is type(tasks) and _settings(block["tasks"]) == _settings(tasks)
    assert type(block["learner"]) is type(learner) and _settings(block["learner"]) == _settings(learner)
    theirs, ours = block["learner"].state_dict(), learner.state_dict()
    assert list(theirs) == list(ours) and all(torch.equal(theirs[name], ours[name]) for name in ours)
    loop = re.search(r"tasks\.sample\((\d+), generator\)", benchmark.readme_loop(workload, 1))
    assert int(loop[1]) == cfg.training.meta_batch_size
    assert torch.equal(block["generator"].get_state(), torch.Generator().manual_seed(cfg.training.seed).get_state())


@pytest.mark.slow  # four fresh interpreters: 10 s alone, 40 s on the contended 2-core box
def test_the_api_benchmark_checks_both_sides_print_the_same_numbers(tmp_path, monkeypatch):
    benchmark = _api_benchmark()
    assert benchmark.measure("maml", 4, tmp_path / "same")[2]
    loop, after, argv, key = benchmark.WORKLOADS["maml"]
    monkeypatch.setitem(benchmark.WORKLOADS, "maml", (loop, after, [*argv, "--seed", "1"], key))
    assert not benchmark.measure("maml", 4, tmp_path / "other seed")[2]


# --- 2. evaluation shows progress; a finished run resumed shows its recorded test; --quick ---
def _tiny_sinusoid(tmp_path, *extra):
    return ["train", "sinusoid-maml", "--iterations", "3", "--meta-batch-size", "2", "--val-tasks", "2",
            "--test-tasks", "7", "--output-dir", str(tmp_path / "run"), *extra]


def test_eval_shows_a_progress_bar_with_the_time_left(tmp_path, capsys):
    assert main(_tiny_sinusoid(tmp_path, "--no-eval", "--no-progress")) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "testing on 7 fixed test tasks" in err and "7/7" in err and "<" in err  # tqdm's [elapsed<left]


def test_a_finished_run_resumed_shows_its_recorded_test_instead_of_testing_again(tmp_path, capsys, monkeypatch):
    assert main(_tiny_sinusoid(tmp_path, "--no-progress")) == 0
    first = capsys.readouterr().out
    import fastadapt.runs.directory as runs

    def no_second_test(*args, **kwargs):
        raise AssertionError("tested again")

    monkeypatch.setattr(runs, "evaluate_learner", no_second_test)
    assert main(_tiny_sinusoid(tmp_path, "--no-progress", "--resume")) == 0
    again = capsys.readouterr().out
    table = first[first.index("sinusoid, K=10"):]
    assert table in again and "recorded in" in again and "fastadapt eval" in again
    monkeypatch.undo()
    assert main(_tiny_sinusoid(tmp_path, "--no-progress", "--resume", "--test-tasks", "5")) == 0  # other settings
    assert "MSE on 5 fixed test tasks" in capsys.readouterr().out


def test_quick_cuts_any_preset_to_a_labelled_try_out(tmp_path, capsys):
    cfg = quick_config(load_preset("omniglot-matching"), "omniglot-matching")
    per_iteration = preset_timings()["seconds_per_iteration"]["omniglot-matching"]
    assert 0 < cfg.training.iterations * per_iteration <= 60 and cfg.evaluation.test_tasks <= 50
    assert cfg.training.output_dir.endswith("-quick") and cfg.training.val_every == cfg.training.iterations
    assert main(["train", "sinusoid-maml", "--quick", "--iterations", "3", "--output-dir", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "QUICK RUN (3 of 70,000 iterations, 50 test tasks)" in captured.out
    assert "QUICK RUN" in captured.err  # said before training starts
    assert "QUICK RUN" in json.loads((tmp_path / "q" / "test_results.json").read_text())["quick"]


def test_a_quick_run_evaluated_later_is_still_labelled(tmp_path, capsys):
    assert main(["train", "sinusoid-maml", "--quick", "--iterations", "3", "--output-dir", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "q"), "--test-tasks", "5", "--json", str(tmp_path / "eval.json")]) == 0
    assert "QUICK RUN (3 of 70,000 iterations" in capsys.readouterr().out
    assert "QUICK RUN" in json.loads((tmp_path / "eval.json").read_text())["quick"]


def test_the_readme_says_how_to_try_a_preset_quickly():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert all(flag in readme for flag in ("--quick", "--test-tasks", "--no-eval"))
    assert re.search(r"fastadapt train \S+ --quick", readme)


# --- 3. labels that say what they measure ---
def _folder_run(tmp_path, glyph_folder):
    """A ProtoNet trained 4-way 2-shot and validated 2-way 1-shot."""
    run = tmp_path / "folder"
    assert main(["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(glyph_folder),
                 "--n-way", "4", "--k-shot", "2", "--num-query", "5", "--eval-ways", "2", "--eval-shots", "1",
                 "--eval-query", "5", "--iterations", "2", "--val-tasks", "2", "--test-tasks", "2", "--threads", "1",
                 "--conv-channels", "8", "--no-progress", "--output-dir", str(run)]) == 0
    return run


def _suptitles(monkeypatch):
    import fastadapt.plots as plots
    seen, finish = [], plots._finish

    def recording(fig, path, *args, **kwargs):
        seen.append(fig._suptitle.get_text() if fig._suptitle else "")
        return finish(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "_finish", recording)
    return seen


def test_the_serve_page_and_the_curves_name_the_validation_episodes(tmp_path, glyph_folder, monkeypatch, capsys):
    seen = _suptitles(monkeypatch)
    run = _folder_run(tmp_path, glyph_folder)
    assert main(["plot", str(run)]) == 0
    assert seen and all("train: 4-way 2-shot, val: 2-way 1-shot" in title for title in seen)
    from fastadapt.serve.model import serve_run
    described = serve_run(run).describe()
    assert described["validation_episodes"] == "2-way 1-shot"
    assert described["curve_titles"] == {"accuracy": "training accuracy (4-way 2-shot)",
                                         "val_accuracy": "validation accuracy (2-way 1-shot)"}
    page = open(os.path.join(ROOT, "src", "fastadapt", "serve", "static", "app.js")).read()
    assert "training episodes' way and shot" not in page and "model.validation_episodes" in page


def test_learning_curves_of_a_run_validated_as_it_trains_say_nothing_more(tmp_path, monkeypatch):
    seen = _suptitles(monkeypatch)
    assert main(_tiny_sinusoid(tmp_path, "--no-progress", "--no-eval")) == 0
    assert seen == ["maml on sinusoid"]


def test_no_learning_curve_title_runs_off_the_figure(tmp_path, monkeypatch):
    """2D navigation's panel titles are the longest ("training return (meta-batch mean; MAML: after ...)")."""
    import matplotlib.pyplot as plt
    import fastadapt.plots as plots
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    records = [{"iteration": i, "return": -40.0 + i, "val_return": -30.0 + i} for i in range(1, 11)]
    plots.plot_learning_curves(records, tmp_path / "curves.png", title="runs/rl-nav2d-maml")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    texts = [fig._suptitle] + [ax.title for ax in fig.axes]
    for text in texts:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1, text.get_text()
    plt.close(fig)


# --- 4. Omniglot without internet ---
def test_a_failed_omniglot_download_says_where_to_put_the_two_zips(tmp_path, monkeypatch):
    from fastadapt.datasets import omniglot
    from fastadapt.datasets.download import DownloadError
    monkeypatch.delenv("FASTADAPT_DATA", raising=False)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", "http://127.0.0.1:9/")  # nothing listens on the discard port
    with pytest.raises(DownloadError) as error:
        omniglot.find_omniglot_archives()
    message = str(error.value)
    assert all(words in message for words in ("images_background.zip", "images_evaluation.zip", "--data-root",
                                              "FASTADAPT_DATA", str(tmp_path / "cache" / "omniglot")))
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "images_background.zip" in readme and "images_evaluation.zip" in readme


def test_presets_print_the_recorded_full_runs_the_readme_quotes(capsys):
    full_runs = preset_timings()["full_runs"]
    assert main(["presets"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    readme = open(os.path.join(ROOT, "README.md")).read()
    for name, run in full_runs.items():
        assert rows[name].rstrip().endswith(f"full run: {run['minutes']:g} min")
        assert f"{run['minutes']:g} min" in readme, name


# --- 5. rough edges ---
def test_ctrl_c_stops_fastadapt_serve_quietly(tmp_path):
    pytest.importorskip("uvicorn")
    import signal
    import socket
    import time
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    server = subprocess.Popen([sys.executable, "-m", "fastadapt", "serve", "--no-train", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    # the "open http://..." line comes after the busy-port check, which listens on the port for a moment: a
    # connection made then would send Ctrl-C before the server runs
    for line in iter(server.stdout.readline, ""):
        if "open http://" in line:
            break
    else:
        raise AssertionError(f"the server stopped before serving: {server.communicate()[1]}")
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in err and "stopped serving" in err, err


def test_the_readme_api_example_says_which_port():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "127.0.0.1:8000/api" not in readme
    block = readme[readme.index("/api/classify\", json.dumps") - 2000:]
    assert "--port 8765" in block and "PORT = 8765" in block


def test_a_misspelled_preset_is_one_line_with_a_suggestion(capsys):
    assert main(["train", "omniglot-protonet-cpuu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'omniglot-protonet-cpu'?" in err and "[" not in err


def test_unreadable_images_are_all_named_in_one_error_or_skipped(tmp_path, capsys):
    from episode_helpers import write_glyph_folder
    folder = write_glyph_folder(tmp_path / "images", classes=10, images=8)
    broken = sorted(folder.glob("*/*.png"))[:5]
    for file in broken:
        file.write_bytes(b"not an image")
    command = ["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(folder), "--n-way", "2",
               "--k-shot", "1", "--num-query", "2", "--eval-query", "2", "--iterations", "1", "--val-tasks", "2",
               "--test-tasks", "2", "--threads", "1", "--conv-channels", "8", "--no-progress",
               "--output-dir", str(tmp_path / "run")]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "5 of the 80 image files" in err and "and 2 more" in err
    assert all(str(file) in err for file in broken[:3]) and "--skip-unreadable" in err
    assert main(command + ["--skip-unreadable"]) == 0
    assert "left out 5 of the 80 image files" in capsys.readouterr().err


def test_an_estimate_prints_to_its_intervals_precision():
    from fastadapt.training.evaluation import Estimate
    assert repr(Estimate(3.0709, 0.1979, 1000)) == "3.07 ± 0.20"
    assert repr(Estimate(0.98641, 0.00219, 600)) == "0.9864 ± 0.0022"
    assert str(Estimate(3.0709, 0.1979, 1000)) == "3.0709 ± 0.1979"  # tables keep four decimals
    assert str({"0 steps": Estimate(3.0709, 0.1979, 1000)}) == "{'0 steps': 3.07 ± 0.20}"


def test_meta_sgd_warns_once_when_evaluated_past_its_trained_steps():
    import warnings
    from fastadapt.algorithms import MetaSGD
    from fastadapt.models import MLP
    learner = MetaSGD(MLP(), "mse", inner_steps=1).eval()
    x, y = torch.randn(2, 5, 1), torch.randn(2, 5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner.adapt(x, y, steps=1)  # as trained: no warning
    with pytest.warns(UserWarning, match="learned its step sizes for 1 step; 3 steps apply them past that"):
        learner.adapt(x, y, steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner.adapt(x, y, steps=5)  # said once


def test_few_test_classes_widen_the_interval_and_say_so():
    from fastadapt.training.evaluation import class_clustered, t_quantile_975
    generator = torch.Generator().manual_seed(0)
    classes = torch.tensor([[0, 1], [1, 0]]).repeat(500, 1)  # 1,000 2-way episodes of the same 2 classes
    per_label = torch.where(classes == 0, 0.9, 0.7) + 0.05 * torch.randn(1000, 2, generator=generator)
    estimate = class_clustered(per_label, classes)
    by_episode = 1.96 * per_label.mean(1).std().item() / 1000 ** 0.5
    assert estimate.num_classes == 2 and estimate.num_tasks == 1000
    assert estimate.episodes_ci95 == pytest.approx(by_episode)
    assert estimate.ci95 > 50 * by_episode and str(estimate).endswith("(2 test classes)")
    many = torch.randperm(100, generator=generator)[:40].view(20, 2).repeat(50, 1)  # 40 classes: not few
    assert class_clustered(per_label, many).num_classes is None
    scipy_stats = pytest.importorskip("scipy.stats")
    assert [round(scipy_stats.t.ppf(0.975, df), 3) for df in range(1, 20)] == [round(t_quantile_975(df), 3)
                                                                                for df in range(1, 20)]


def test_a_folder_run_with_two_test_classes_reports_them(tmp_path, glyph_folder, capsys):
    from episode_helpers import write_glyph_folder
    folder = write_glyph_folder(tmp_path / "ten", classes=10, images=10)  # 6 / 2 / 2 classes
    assert main(["train", "--algorithm", "protonet", "--tasks", "folder", "--data-root", str(folder), "--n-way", "2",
                 "--k-shot", "1", "--num-query", "5", "--eval-query", "5", "--iterations", "1", "--val-tasks", "2",
                 "--test-tasks", "100", "--threads", "1", "--conv-channels", "8", "--no-progress",
                 "--output-dir", str(tmp_path / "run")]) == 0
    assert "(2 test classes)" in capsys.readouterr().out


# --- 6. what people expect from similar tools ---
def test_the_classifier_follows_scikit_learns_estimator_conventions(tmp_path, glyph_folder):
    base = pytest.importorskip("sklearn.base")
    from fastadapt import FewShotClassifier
    clf = FewShotClassifier.from_run(_folder_run(tmp_path, glyph_folder))
    assert (repr(clf).startswith("FewShotClassifier(protonet, trained 4-way 2-shot on folder")
            and "unfitted" in repr(clf))
    classes = sorted(p for p in glyph_folder.iterdir() if p.is_dir())[:3]
    files = {c.name: sorted(c.glob("*.png")) for c in classes}
    clf.fit([f for c in files for f in files[c][:2]], [c for c in files for _ in range(2)])
    queries, truth = [f for c in files for f in files[c][2:6]], [c for c in files for _ in range(4)]
    assert clf.score(queries, truth) == float((clf.predict(queries) == truth).mean())
    assert "fitted on 3 classes" in repr(clf)
    copy = base.clone(clf)
    assert "unfitted" in repr(copy) and copy.learner is not clf.learner
    assert copy.get_params().keys() == clf.get_params().keys() == {"learner", "preparation", "config", "invert",
                                                                   "device"}
    assert copy.set_params(invert="auto").invert == "auto" and "unfitted" in repr(copy)
    with pytest.raises(ValueError, match="no parameter invertt"):
        copy.set_params(invertt=True)


def test_tensorboard_gets_the_scalars_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert main(_tiny_sinusoid(tmp_path, "--no-progress", "--no-eval", "--tensorboard", "--log-every", "1",
                               "--val-every", "2")) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    expected = {(key, r["iteration"], value) for r in logged for key, value in r.items() if key != "iteration"}
    written = {(key, e.step, e.value) for key in events.Tags()["scalars"] for e in events.Scalars(key)}
    assert {(k, s) for k, s, _ in written} == {(k, s) for k, s, _ in expected}
    assert all(abs(v - dict(((k, s), v) for k, s, v in written)[k, s]) <= 1e-6 * max(1, abs(v)) for k, s, v in expected)


def test_tensorboard_gets_the_learning_curves_figure(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert main(_tiny_sinusoid(tmp_path, "--no-progress", "--no-eval", "--tensorboard")) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert events.Tags()["images"] == ["learning_curves"]
    image = events.Images("learning_curves")[-1]
    with Image.open(tmp_path / "run" / "learning_curves.png") as png:
        assert (image.width, image.height) == png.size


def test_tensorboard_without_the_package_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(_tiny_sinusoid(tmp_path, "--no-progress", "--no-eval", "--tensorboard")) == 2
    assert "--tensorboard needs the tensorboard package: pip install tensorboard" in capsys.readouterr().err
