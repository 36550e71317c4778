"""Meta-RL through the run machinery: presets, small end-to-end CLI runs, exact resume, one-line errors."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastadapt.benchmarks.preset_runs import preset_run
from fastadapt.cli import main
from fastadapt.config.presets import load_preset, preset_names
from fastadapt.config.schema import Config
from fastadapt.runs.directory import build_learner, evaluate_learner, load_run, train, trained_run
from fastadapt.runs.inspection import navigation_paths
from fastadapt.training.builders import build_tasks
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.evaluation import Estimate, mean_and_ci95
from fastadapt.training.trainer import Trainer
from run_helpers import Killed, kill_at  # the tests directory is on sys.path under pytest

TINY_NAV = ["--horizon", "8", "--trajectories", "3", "--meta-batch-size", "3", "--hidden-sizes", "8", "8",
            "--val-tasks", "3", "--test-tasks", "3", "--no-progress"]


# Rollouts, inner steps and small GRUs are many tiny tensor operations: extra threads only add contention.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_rl_preset_is_a_valid_run_configuration():
    names = [n for n in preset_names() if n.startswith("rl-")]
    assert {"rl-nav2d-maml", "rl-nav2d-pretrained", "rl-nav2d-random", "rl-nav2d-oracle", "rl-bandit-rl2",
            "rl-bandit-rl2-k5-n10", "rl-bandit-rl2-k50-n500", "rl-bandit-ucb1", "rl-bandit-thompson",
            "rl-bandit-random-arms", "rl-bandit-bayes-optimal", "rl-mdp-rl2"} <= set(names)
    maml = load_preset("rl-nav2d-maml")
    assert (maml.method.inner_lr, maml.method.max_kl, maml.task.horizon, maml.task.trajectories,
            maml.training.meta_batch_size, maml.model.hidden_sizes) == (0.1, 0.01, 100, 20, 20, [100, 100])


def test_cli_trains_evaluates_and_plots_maml_rl_on_2d_navigation(tmp_path, capsys):
    run = tmp_path / "maml"
    assert main(["train", "rl-nav2d-maml", "--iterations", "2", "--val-every", "1", "--log-every", "1",
                 "--output-dir", str(run),
                 *TINY_NAV]) == 0
    out = capsys.readouterr().out
    assert "2D navigation, horizon 8" in out and "3 fixed test tasks" in out
    for row in ("0 steps", "1 step", "2 steps", "3 steps"):
        assert row in out
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2] and "val_return" in log[-1] and "return_pre_update" in log[0]
    assert main(["eval", str(run), "--json", str(tmp_path / "eval.json")]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert set(results) == {"0 steps", "1 step", "2 steps", "3 steps"}
    assert main(["plot", str(run)]) == 0
    assert (run / "trajectories.png").stat().st_size > 10_000 and (run / "learning_curves.png").exists()
    # a run still judged on validation can be drawn on its validation goals instead of the test goals
    assert main(["plot", str(run), "--split", "val"]) == 0
    cfg, learner = load_run(run, "best")
    test, val = navigation_paths(cfg, learner, split="test"), navigation_paths(cfg, learner, split="val")
    assert test[0]["title"].startswith("test goal") and val[0]["title"].startswith("validation goal")
    assert all(t["goal"] != v["goal"] for t, v in zip(test, val))


def test_cli_trains_rl2_and_evaluates_bandit_baselines(tmp_path, capsys):
    assert main(["train", "rl-bandit-rl2", "--arms", "3", "--horizon", "5", "--recurrent-size", "8",
                 "--meta-batch-size", "8", "--iterations", "2", "--ppo-epochs", "1", "--val-tasks", "4",
                 "--test-tasks", "5", "--output-dir", str(tmp_path / "rl2"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Bernoulli bandits, k=3 arms, n=5 pulls" in out and "return per trial" in out
    for algorithm in ("ucb1", "thompson", "random-arms"):
        assert main(["train", f"rl-bandit-{algorithm}", "--arms", "3", "--horizon", "5", "--test-tasks", "5",
                     "--val-tasks", "4", "--output-dir", str(tmp_path / algorithm), "--no-progress"]) == 0
        assert "return per trial" in capsys.readouterr().out


def test_the_rl2_second_phase_preset_is_the_first_with_only_the_losses_and_the_start_changed():
    first, second = load_preset("rl-bandit-rl2").flat(), load_preset("rl-bandit-rl2-finetune").flat()
    changed = {key for key in first if first[key] != second[key]}
    assert changed == {"value_coef", "entropy_coef", "iterations", "init_from", "output_dir"}
    assert (second["value_coef"], second["entropy_coef"], second["init_from"]) == \
        (0.05, 0.03, "runs/rl-bandit-rl2-1000")


TINY_RL2 = dict(arms=3, horizon=5, recurrent_size=8, meta_batch_size=8, ppo_epochs=1, val_tasks=4, test_tasks=5,
                val_every=1, checkpoint_every=1)


def test_trained_run_trains_resumes_reuses_and_refuses_other_settings(tmp_path):
    cfg = load_preset("rl-bandit-rl2").replace(**TINY_RL2, iterations=2, output_dir=str(tmp_path / "rl2"))
    run_dir = trained_run(cfg)
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 2
    stamp = (run_dir / "last.pt").stat().st_mtime_ns
    assert trained_run(cfg) == run_dir and (run_dir / "last.pt").stat().st_mtime_ns == stamp  # reused as it is
    assert load_checkpoint(trained_run(cfg.replace(iterations=3)) / "last.pt")["iteration"] == 3  # resumed
    with pytest.raises(ValueError, match="recurrent_size=8"):
        trained_run(cfg.replace(recurrent_size=16, iterations=4))
    saved = (run_dir / "config.yaml").read_text()
    with pytest.raises(ValueError, match="trained 3 iterations, more than the 2 asked for"):
        trained_run(cfg)  # not reported under a 2-iteration budget
    assert (run_dir / "config.yaml").read_text() == saved  # nor rewritten to say 2
    with pytest.raises(SystemExit) as stopped:
        preset_run(cfg, "rl_bandits")  # a benchmark script: one line, exit status 2
    assert stopped.value.code == 2
    ucb1 = load_preset("rl-bandit-ucb1").replace(arms=3, horizon=5, test_tasks=5, output_dir=str(tmp_path / "ucb1"))
    assert trained_run(ucb1) == trained_run(ucb1)  # a 0-iteration run, its settings resolved as saved
    untrained = cfg.replace(output_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="train it first"):
        trained_run(untrained, train_missing=False)


def test_a_run_is_tested_as_its_latest_settings_say_not_as_its_checkpoint_was_saved(tmp_path):
    """A resume may change test_tasks / eval_steps after the best checkpoint was written: load_run (fastadapt eval,
    the benchmarks) follows config.yaml. A benchmark once tested the oracle on 40 goals where its preset said 400."""
    cfg = load_preset("rl-bandit-rl2").replace(**TINY_RL2, iterations=2, output_dir=str(tmp_path / "rl2"))
    run_dir = trained_run(cfg)
    train(cfg.replace(test_tasks=7), resume=True, progress=False)  # nothing more to train; config.yaml rewritten
    assert load_checkpoint(run_dir / "best.pt")["config"]["evaluation"]["test_tasks"] == 5
    loaded, _ = load_run(run_dir, "best")
    assert loaded.evaluation.test_tasks == 7
    stamp = (run_dir / "last.pt").stat().st_mtime_ns
    trained_run(cfg.replace(test_tasks=9))  # a benchmark reusing the finished run with a preset's new test_tasks
    assert load_run(run_dir, "best")[0].evaluation.test_tasks == 9
    assert (run_dir / "last.pt").stat().st_mtime_ns == stamp  # nothing retrained


def test_the_nav2d_benchmark_tests_each_goal_as_fastadapt_eval_does(tmp_path):
    """benchmarks/rl_nav2d.py keeps every test goal's return (for the paired MAML - pretrained difference); their
    mean ± CI must be the figures `fastadapt eval` prints for the same run."""
    spec = importlib.util.spec_from_file_location(
        "rl_nav2d", Path(__file__).resolve().parents[1] / "benchmarks" / "rl_nav2d.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    cfg = load_preset("rl-nav2d-maml").replace(horizon=6, trajectories=3, meta_batch_size=2, hidden_sizes=[8],
                                               iterations=1, val_tasks=3, test_tasks=5, eval_steps=[0, 1],
                                               output_dir=str(tmp_path / "maml"))
    cfg, learner = load_run(trained_run(cfg), "best")
    per_goal = benchmark.test_returns(cfg, learner)
    assert list(per_goal) == ["0 steps", "1 step"] and all(r.shape == (5,) for r in per_goal.values())
    expected = evaluate_learner(cfg, learner)
    for row, returns in per_goal.items():
        assert mean_and_ci95(returns) == expected[row]


def test_the_nav2d_benchmark_chooses_the_later_step_size_by_the_2_step_validation_return(tmp_path, monkeypatch):
    """--choose-later-steps: the second step's size is the grid's best by the mean 2-step return on validation
    goals, with the first step kept; the sizes tried must change that return (the later step is really taken)."""
    spec = importlib.util.spec_from_file_location(
        "rl_nav2d", Path(__file__).resolve().parents[1] / "benchmarks" / "rl_nav2d.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    monkeypatch.setattr(benchmark, "STEP_SIZES", [0.01, 1.0])
    cfg = load_preset("rl-nav2d-maml").replace(horizon=6, trajectories=3, meta_batch_size=2, hidden_sizes=[8],
                                               iterations=1, val_tasks=3, test_tasks=5, eval_steps=[0, 1, 2],
                                               output_dir=str(tmp_path / "maml"))
    cfg, learner = load_run(trained_run(cfg), "best")
    later, scores = benchmark.choose_later_step_size(cfg, learner, 0.1)
    assert list(scores) == [0.01, 1.0] and scores[0.01] != scores[1.0]
    assert later == max(scores, key=scores.get)
    learner.eval_inner_lrs = [0.1, later]
    assert evaluate_learner(cfg, learner, steps=[2], split="val")["2 steps"].mean == scores[later]


@pytest.mark.parametrize("script, preset, change, arguments", [
    ("rl_bandits", "rl-bandit-rl2-k5-n10", dict(recurrent_size=64), ["--settings", "5x10"]),
    ("rl_nav2d", "rl-nav2d-maml", dict(gae_lambda=1.0), []),
])
def test_a_benchmark_refuses_a_run_made_with_other_settings_than_its_preset(tmp_path, script, preset, change,
                                                                              arguments):
    stale = load_preset(preset).replace(**change)
    run_dir = tmp_path / preset
    run_dir.mkdir()
    stale.replace(output_dir=str(run_dir)).save(run_dir / "config.yaml")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{script}.py"
    done = subprocess.run([sys.executable, str(path), "--output-dir", str(tmp_path), *arguments],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    name, value = next(iter(change.items()))
    assert done.stderr.startswith(f"{script}: error: ") and f"{name}={value}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_bandit_benchmark_tests_a_fresh_draw_once(tmp_path):
    """benchmarks/rl_bandits.py --test-set 2: every baseline is tested on the second draw of test bandits (other
    figures than the first draw's), the look counted once on that set in each run directory, and results.json
    says which set and how many looks each row's run has had; --rl2 of another setting's preset leaves no RL^2
    row to train."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_bandits.py"
    results = {}
    for test_set in (1, 2):
        out = tmp_path / f"set{test_set}"
        done = subprocess.run([sys.executable, str(path), "--output-dir", str(out), "--settings", "5x10",
                               "--rl2", "rl-bandit-rl2", "--test-set", str(test_set)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        results[test_set] = json.loads((out / "results.json").read_text())["5x10"]
        assert results[test_set]["test_set"] == test_set
        assert not any(row.startswith("RL^2 (ours") for row in results[test_set])
        tested = [run for run in out.iterdir() if (run / "test_looks.json").exists()]
        assert len(tested) == 4  # UCB1 at the chosen c, Thompson, random, Bayes-optimal
        assert all(json.loads((run / "test_looks.json").read_text()) == {str(test_set): 1} for run in tested)
        assert set(results[test_set]["test_looks"].values()) == {1} and len(results[test_set]["test_looks"]) == 4
    for row in ("Thompson sampling", "random", "Bayes-optimal (exact DP, the ceiling)"):
        assert results[1][row]["mean"] != results[2][row]["mean"], row
    assert results[1]["ucb1_validation"] == results[2]["ucb1_validation"]  # validation does not depend on it


def _params(learner):
    return {k: v.clone() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("overrides", [
    dict(algorithm="maml-rl", tasks="nav2d", horizon=6, trajectories=3, meta_batch_size=2, hidden_sizes=[8],
         inner_lr=0.1),
    dict(algorithm="metasgd-rl", tasks="nav2d", horizon=6, trajectories=3, meta_batch_size=2, hidden_sizes=[8],
         inner_lr=0.1),
    dict(algorithm="rl2", tasks="bandit", arms=3, horizon=5, trajectories=2, meta_batch_size=4, recurrent_size=8,
         ppo_epochs=2, ppo_minibatches=2),
], ids=["maml-rl", "metasgd-rl", "rl2"])
def test_killed_and_resumed_rl_run_equals_uninterrupted_run(tmp_path, overrides):
    def cfg(name):
        return Config(iterations=6, log_every=1, val_every=2, checkpoint_every=2, val_tasks=2, test_tasks=2,
                      output_dir=str(tmp_path / name), **overrides)

    _, straight = train(cfg("a"), progress=False)
    config = cfg("b").resolved()
    tasks = build_tasks(config)
    learner = build_learner(config, tasks)
    with pytest.raises(Killed):
        Trainer(config, learner, tasks, progress=False, gradient_hook=kill_at(5)).fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 4
    torch.manual_seed(12345)  # resuming must not depend on the global RNG at restart
    _, resumed = train(cfg("b"), resume=True, progress=False)
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_a_run_whose_config_yaml_leaves_gae_lambda_unset_loads_and_resumes_with_the_methods_default(tmp_path):
    """Runs written before the method's default was filled in by ``Config.resolved()`` hold gae_lambda null in
    config.yaml and their checkpoints: they load, and resume, with the default they were trained with."""
    run = tmp_path / "r"
    cfg = Config(algorithm="rl2", tasks="bandit", arms=3, horizon=5, trajectories=2, meta_batch_size=4,
                 recurrent_size=8, ppo_epochs=1, ppo_minibatches=1, iterations=1, val_tasks=2, test_tasks=2,
                 output_dir=str(run))
    train(cfg, progress=False)
    assert Config.load(run / "config.yaml").method.gae_lambda == 0.3
    Config.load(run / "config.yaml").replace(gae_lambda=None).save(run / "config.yaml")
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run / name)
        payload["config"] = Config.from_dict(payload["config"]).replace(gae_lambda=None).to_dict()
        torch.save(payload, run / name)
    assert load_run(run)[1].gae_lambda == 0.3
    _, learner = train(cfg.replace(iterations=2), resume=True, progress=False)
    assert learner.gae_lambda == 0.3 and load_checkpoint(run / "last.pt")["iteration"] == 2


def test_rl_evaluation_is_reproducible_and_reads_validation_tasks_on_request(tmp_path):
    train(Config(algorithm="maml-rl", tasks="nav2d", horizon=6, trajectories=3, meta_batch_size=2, hidden_sizes=[8],
                 iterations=1, val_tasks=2, test_tasks=3, eval_steps=[0, 1], output_dir=str(tmp_path / "r")),
          progress=False)
    cfg, learner = load_run(tmp_path / "r")
    first, again = evaluate_learner(cfg, learner), evaluate_learner(cfg, learner)
    assert first == again and set(first) == {"0 steps", "1 step"} and first["1 step"].num_tasks == 3
    assert evaluate_learner(cfg, learner, split="val") != first


@pytest.mark.parametrize("args,message", [
    (["--tasks", "nav3d", "--algorithm", "maml-rl"], "unknown tasks 'nav3d' (--tasks): did you mean 'nav2d'?"),
    (["--tasks", "nav2d", "--algorithm", "maml-rl", "--horizon", "0"], "horizon must be a positive integer"),
    (["--tasks", "nav2d", "--algorithm", "maml-rl", "--policy", "categorical"],
     "a categorical policy needs discrete actions, but this task's actions are continuous"),
    (["--tasks", "nav2d", "--algorithm", "maml"], "reinforcement-learning family: use --algorithm"),
    (["--tasks", "sinusoid", "--algorithm", "rl2"], "rl2 learns in MDPs"),
    (["--tasks", "bandit", "--algorithm", "ucb1", "--iterations", "5"], "nothing to train"),
    (["--tasks", "nav2d", "--algorithm", "rl2", "--policy", "gaussian"], "rl2 needs --policy gru"),
    (["--tasks", "nav2d", "--algorithm", "maml-rl", "--gamma", "1.5"], "gamma must lie in [0, 1]"),
    (["--tasks", "bandit", "--algorithm", "rl2", "--nproc", "2", "--meta-batch-size", "4"],
     "--nproc: rl2 runs in one process"),
])
def test_bad_rl_settings_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["train", *args, "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fastadapt: error:") and err.count("\n") == 1


def test_a_nan_return_stops_the_run_with_a_one_line_error(tmp_path, capsys, monkeypatch):
    from fastadapt.environments import navigation

    real_step = navigation.BatchedNavigation2D.step

    def step_with_nan(self, actions):
        observations, rewards, terminated = real_step(self, actions)
        return observations, rewards * float("nan"), terminated

    monkeypatch.setattr(navigation.BatchedNavigation2D, "step", step_with_nan)
    assert main(["train", "--tasks", "nav2d", "--algorithm", "maml-rl", "--iterations", "1", *TINY_NAV,
                 "--output-dir", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the line saying how many threads the run uses
    assert last.startswith("fastadapt: error: a rollout returned a non-finite (NaN or inf) reward")


def test_fastadapt_eval_tests_a_baseline_with_the_step_size_its_benchmark_chose(tmp_path, capsys):
    """The benchmarks choose a baseline's test-time step size on validation goals and record it in config.yaml:
    fastadapt eval of that run then measures what the benchmark reported, not the preset's step size."""
    from fastadapt.runs.directory import record_evaluation_settings

    cfg = load_preset("rl-nav2d-pretrained").replace(horizon=6, trajectories=3, meta_batch_size=2, hidden_sizes=[8],
                                                     iterations=1, val_tasks=3, test_tasks=5, eval_steps=[0, 1],
                                                     output_dir=str(tmp_path / "pretrained"))
    run_dir = trained_run(cfg)
    chosen = [0.5, 0.25]
    _, learner = load_run(run_dir, "best")
    assert learner.eval_inner_lrs != chosen
    learner.eval_inner_lrs = chosen  # what the benchmark tests
    benchmark = evaluate_learner(cfg, learner)
    record_evaluation_settings(run_dir, eval_inner_lrs=chosen)
    assert load_run(run_dir, "best")[1].eval_inner_lrs == chosen
    assert main(["eval", str(run_dir), "--json", "-"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert {row: Estimate(**e) for row, e in results.items()} == benchmark
    with pytest.raises(ValueError, match="not settings of how a run is tested"):
        record_evaluation_settings(run_dir, inner_lr=0.5)
