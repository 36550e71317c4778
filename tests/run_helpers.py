"""Helpers shared by the tests of whole runs: a small sinusoid MAML run's settings, and the exception a test
raises from a gradient hook to kill a run mid-training (before resuming it)."""
from fastadapt.config.schema import Config


class Killed(Exception):
    """Raised by a test's gradient hook: the run stops as if its process had been killed."""


def kill_at(call: int):
    """A gradient hook that raises ``Killed`` at its ``call``-th call (the iteration it stops in, from 1)."""
    calls = {"n": 0}

    def hook(_) -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise Killed

    return hook


def sinusoid_run(run_dir, **overrides) -> Config:
    """MAML on 5-shot sinusoids, 40 iterations of 4 tasks, logged every 5, validated and checkpointed every 10 on
    20 validation tasks, tested on 20; ``overrides`` change any of it."""
    values = dict(algorithm="maml", tasks="sinusoid", k_shot=5, meta_batch_size=4, iterations=40, log_every=5,
                  val_every=10, checkpoint_every=10, val_tasks=20, test_tasks=20, output_dir=str(run_dir))
    values.update(overrides)
    return Config(**values)
