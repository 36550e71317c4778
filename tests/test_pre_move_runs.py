"""Run directories written before the method and task-family specifications (issue 27) still load and
evaluate to the figures recorded when they were written (tests/fixtures/make_pre_move_runs.py)."""
import json
import shutil

import pytest

from fastadapt.cli import main
from fixtures.make_pre_move_runs import OUT, RUNS, evaluate_fixture

EXPECTED = json.loads((OUT / "expected.json").read_text())


def _close(figures, recorded):
    assert figures.keys() == recorded.keys()
    for row, (mean, ci95) in figures.items():
        assert mean == pytest.approx(recorded[row][0], rel=1e-5, abs=1e-6), row
        assert ci95 == pytest.approx(recorded[row][1], rel=1e-5, abs=1e-6), row


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_run_written_before_the_move_evaluates_to_its_recorded_figures(name, glyph_folder, tmp_path, one_thread):
    run_dir = shutil.copytree(OUT / name, tmp_path / name)
    _close(evaluate_fixture(run_dir, str(glyph_folder)), EXPECTED[name])


@pytest.mark.parametrize("name", ["sinusoid-maml", "nav2d-maml-rl"])
def test_fastadapt_eval_prints_the_recorded_figures_of_a_pre_move_run(name, tmp_path, capsys, one_thread):
    run_dir = shutil.copytree(OUT / name, tmp_path / name)
    assert main(["eval", str(run_dir), "--json", "-"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    _close({row: (r["mean"], r["ci95"]) for row, r in results.items()}, EXPECTED[name])
