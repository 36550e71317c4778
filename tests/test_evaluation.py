"""The field's summary: mean and 95% confidence interval over tasks, and the text table."""
import math

import pytest
import torch

from fastadapt.training.evaluation import Estimate, format_table, mean_and_ci95


def test_mean_and_ci95_is_1_96_standard_errors():
    values = torch.tensor([0.2, 0.4, 0.6, 0.8])
    estimate = mean_and_ci95(values)
    std = values.double().std(unbiased=True).item()
    assert estimate.mean == pytest.approx(0.5) and estimate.num_tasks == 4
    assert estimate.ci95 == pytest.approx(1.96 * std / 2)
    assert mean_and_ci95(torch.tensor([3.0])).ci95 == 0.0
    with pytest.raises(ValueError, match="empty"):
        mean_and_ci95(torch.tensor([]))


def test_a_diverged_result_says_so_in_the_table():
    diverged = mean_and_ci95(torch.tensor([0.1, float("inf")]))
    assert not math.isfinite(diverged.mean) and str(diverged) == "diverged"
    table = format_table({"a": {"1 step": Estimate(0.25, 0.01, 10), "10 steps": diverged},
                          "b": {"1 step": Estimate(0.5, 0.02, 10)}}, "title")
    lines = table.splitlines()
    assert lines[0] == "title" and lines[1].split() == ["a", "b"]
    assert lines[2].split() == ["1", "step", "0.2500", "±", "0.0100", "0.5000", "±", "0.0200"]
    assert lines[3].split() == ["10", "steps", "diverged", "-"]
