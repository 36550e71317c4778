"""The meta-RL speed benchmark on a tiny setting: it prints both comparisons, and its per-task reference
computes the same meta-update as ours (else its speed-up would mean nothing)."""
import pytest

from fastadapt.benchmarks.rl_speed import agreement_in_float64, main


# Rollouts, inner steps and small GRUs are many tiny tensor operations: extra threads only add contention.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_reference_meta_iteration_updates_the_weights_as_ours_does():
    assert agreement_in_float64(curvature_fraction=1.0) < 1e-6


def test_benchmark_prints_environment_and_meta_iteration_speeds(capsys):
    assert main(["--tasks", "2", "--trajectories", "2", "--horizon", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "environment steps per second (4 environments, random actions)" in out
    for row in ("batched torch simulator", "gymnasium SyncVectorEnv", "ours (batched over tasks)",
                "per-task reference loop", "largest weight difference"):
        assert row in out, row
    assert out.count("speed-up") == 2
