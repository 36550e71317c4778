"""Versioned test sets: a training or validation stream never draws a test task; test set 1 is the draw of the
figures before versions; every test look is counted and recorded with the version in the results file."""
import json

import pytest
import torch

from fastadapt.cli import main
from fastadapt.config.schema import Config, ConfigError
from fastadapt.tasks import Navigation2DTasks, SinusoidTasks
from fastadapt.tasks.base import MAX_TEST_SET, SPLIT_SEED_OFFSETS, TRAINING_SEEDS, seed_of_test_set

TINY = ["--iterations", "4", "--meta-batch-size", "4", "--log-every", "2", "--val-every", "2",
        "--checkpoint-every", "2", "--val-tasks", "10", "--test-tasks", "20", "--no-progress"]


def _generator_seed(seed: int) -> int:
    """The seed a torch CPU generator really uses: it keeps the low 32 bits."""
    return seed % 2**32


def test_the_collision_the_guard_is_for():
    """Seeded with the test offset, the training stream's first meta-batch is test set 1, task for task."""
    tasks = SinusoidTasks()
    trained_on = tasks.sample(25, torch.Generator().manual_seed(SPLIT_SEED_OFFSETS["test"]))
    torch.testing.assert_close(trained_on.query_y, tasks.fixed_tasks(25, "test").query_y, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [SPLIT_SEED_OFFSETS["test"], SPLIT_SEED_OFFSETS["val"], -1, TRAINING_SEEDS,
                                  2**32 + SPLIT_SEED_OFFSETS["test"], TRAINING_SEEDS + SPLIT_SEED_OFFSETS["test"]])
def test_a_training_seed_that_reaches_a_fixed_stream_is_refused(seed):
    with pytest.raises(ConfigError, match="seed"):
        Config(seed=seed)


def test_the_cli_refuses_it_in_one_line(tmp_path, capsys):
    assert main(["train", "sinusoid-maml", *TINY, "--seed", "2000003", "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test set 1" in err and "Traceback" not in err


def test_no_accepted_training_seed_starts_a_test_or_validation_stream():
    """Every stream the fixed tasks come from starts at a generator seed no accepted training seed maps to."""
    fixed = [_generator_seed(seed_of_test_set(n) + SPLIT_SEED_OFFSETS["test"]) for n in range(1, MAX_TEST_SET + 1)]
    fixed.append(SPLIT_SEED_OFFSETS["val"])
    assert len(set(fixed)) == len(fixed)  # every version is a draw of its own
    for seed in fixed[1:-1]:  # test sets from 2 on lie above every training seed
        assert seed >= TRAINING_SEEDS
    for seed in (fixed[0], fixed[-1]):  # validation and test set 1 sit inside the range: refused one by one
        with pytest.raises(ConfigError):
            Config(seed=seed)
    Config(seed=TRAINING_SEEDS - 1)  # the range's edge is accepted


def test_test_set_1_is_todays_draw_and_2_another():
    tasks = Navigation2DTasks(horizon=5)
    today = tasks.fixed_tasks(8, "test")
    first = tasks.fixed_tasks(8, "test", seed=seed_of_test_set(1))
    second = tasks.fixed_tasks(8, "test", seed=seed_of_test_set(2))
    torch.testing.assert_close(first.env.goals, today.env.goals, rtol=0, atol=0)
    assert not torch.isclose(second.env.goals, today.env.goals).any()
    with pytest.raises(ConfigError, match="test_set"):
        Config(test_set=0)


def test_every_test_look_is_counted_and_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid-maml", *TINY, "--output-dir", str(run)]) == 0
    recorded = json.loads((run / "test_results.json").read_text())
    assert (recorded["test_set"], recorded["test_looks"]) == (1, 1)  # the end-of-training test
    assert main(["eval", str(run), "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert (again["test_set"], again["test_looks"]) == (1, 2)
    assert again["results"] == recorded["results"]  # the same tasks: the same figures
    assert main(["eval", str(run), "--json", str(tmp_path / "fresh.json"), "--test-set", "2"]) == 0
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    assert (fresh["test_set"], fresh["test_looks"]) == (2, 1)
    assert fresh["results"]["1 step"]["mean"] != recorded["results"]["1 step"]["mean"]
    assert json.loads((run / "test_looks.json").read_text()) == {"1": 2, "2": 1}
    capsys.readouterr()


def test_looks_counted_before_versions_are_test_set_1s(tmp_path):
    from fastadapt.runs.directory import count_test_look, looks_at_test_set

    (tmp_path / "test_looks.json").write_text(json.dumps({"looks": 2}))
    assert (looks_at_test_set(tmp_path, 1), looks_at_test_set(tmp_path, 2)) == (2, 0)
    assert count_test_look(tmp_path, 1) == 3
    assert json.loads((tmp_path / "test_looks.json").read_text()) == {"1": 3}
