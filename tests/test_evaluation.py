"""The field's summary: mean and 95% confidence interval over tasks, and the text table."""
import math
import statistics

import pytest
import torch

from fastadapt.training.evaluation import SMALL_SAMPLE, Estimate, format_table, mean_and_ci95, t_quantile_975


def test_mean_and_ci95_is_t_standard_errors_for_few_tasks_and_1_96_for_many():
    values = [0.2, 0.4, 0.6, 0.8]
    estimate = mean_and_ci95(torch.tensor(values, dtype=torch.float64))
    # Student's t at 3 degrees of freedom, 97.5%: 3.182446305284263 (tables; scipy.stats.t.ppf(0.975, 3))
    assert estimate.mean == pytest.approx(0.5) and estimate.num_tasks == 4
    assert estimate.ci95 == pytest.approx(3.182446305284263 * statistics.stdev(values) / 2, rel=1e-12)
    many = [float(i % 7) for i in range(SMALL_SAMPLE)]
    assert mean_and_ci95(torch.tensor(many)).ci95 == pytest.approx(1.96 * statistics.stdev(many) / SMALL_SAMPLE ** 0.5)
    assert mean_and_ci95(torch.tensor([3.0])).ci95 == 0.0
    with pytest.raises(ValueError, match="empty"):
        mean_and_ci95(torch.tensor([]))


def test_t_quantiles_are_students():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 2 * SMALL_SAMPLE):
        assert t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10, abs=1e-10), df
    # at 19, 21 and 40 tasks the normal 1.96 would be 3-7% too narrow
    assert [round(t_quantile_975(n - 1) / 1.96 - 1, 2) for n in (19, 21, 40)] == [0.07, 0.06, 0.03]
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_an_at_least_target_is_met_by_the_interval_not_the_mean():
    assert Estimate(6.64, 0.15, 10).at_least(6.5).startswith("NOT met: the mean is above")
    assert Estimate(6.64, 0.15, 10).at_least(6.5) != "met"
    assert Estimate(6.64, 0.13, 10).at_least(6.5) == "met"
    assert Estimate(9.97, 19.87, 20).at_least(0) != "met"  # HalfCheetah's forward direction
    assert Estimate(6.0, 0.1, 10).at_least(6.5) == "NOT met"


def test_a_diverged_result_says_so_in_the_table():
    diverged = mean_and_ci95(torch.tensor([0.1, float("inf")]))
    assert not math.isfinite(diverged.mean) and str(diverged) == "diverged"
    table = format_table({"a": {"1 step": Estimate(0.25, 0.01, 10), "10 steps": diverged},
                          "b": {"1 step": Estimate(0.5, 0.02, 10)}}, "title")
    lines = table.splitlines()
    assert lines[0] == "title" and lines[1].split() == ["a", "b"]
    assert lines[2].split() == ["1", "step", "0.2500", "±", "0.0100", "0.5000", "±", "0.0200"]
    assert lines[3].split() == ["10", "steps", "diverged", "-"]
