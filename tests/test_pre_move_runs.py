"""Run directories written before the method and task-family specifications (issue 27) still load and
evaluate to the figures recorded when they were written (tests/fixtures/make_pre_move_runs.py).

Since then (b338af9) a classification test over at most 20 test classes reports the wider of the interval
over episodes and a t interval over its classes: where it is the class one (``num_classes`` set) the recorded
interval over episodes is a lower bound, not the figure. And since Student's t intervals for fewer than
SMALL_SAMPLE tasks (issue 30) the recorded 1.96-standard-error interval of such a test is scaled by t / 1.96."""
import json
import shutil

import pytest

from fastadapt.cli import main
from fastadapt.training.evaluation import ci95_factor
from fixtures.make_pre_move_runs import OUT, RUNS, evaluate_fixture

EXPECTED = json.loads((OUT / "expected.json").read_text())


def _close(figures, recorded):
    """``figures``: {row: (mean, ci95, num_classes, num_tasks)}; ``recorded``: {row: [mean, ci95 over episodes
    (1.96 standard errors)]}."""
    assert figures.keys() == recorded.keys()
    for row, (mean, ci95, num_classes, num_tasks) in figures.items():
        assert mean == pytest.approx(recorded[row][0], rel=1e-5, abs=1e-6), row
        interval = recorded[row][1] * ci95_factor(num_tasks) / 1.96
        if num_classes is None:
            assert ci95 == pytest.approx(interval, rel=1e-5, abs=1e-6), row
        else:
            assert ci95 >= interval * (1 - 1e-5), row


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_run_written_before_the_move_evaluates_to_its_recorded_figures(name, glyph_folder, tmp_path, one_thread):
    run_dir = shutil.copytree(OUT / name, tmp_path / name)
    results = evaluate_fixture(run_dir, str(glyph_folder))
    _close({row: (e.mean, e.ci95, e.num_classes, e.num_tasks) for row, e in results.items()}, EXPECTED[name])


@pytest.mark.parametrize("name", ["sinusoid-maml", "nav2d-maml-rl"])
def test_fastadapt_eval_prints_the_recorded_figures_of_a_pre_move_run(name, tmp_path, capsys, one_thread):
    run_dir = shutil.copytree(OUT / name, tmp_path / name)
    assert main(["eval", str(run_dir), "--json", "-"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    _close({row: (r["mean"], r["ci95"], r.get("num_classes"), r["num_tasks"]) for row, r in results.items()},
           EXPECTED[name])
