"""A new user's first hour, part II: the Python API on the threads the command line chooses, evaluation that
shows progress, labels that say what they measure, errors that say what to do."""
import os
import subprocess
import sys

import pytest
import torch

from fastadapt import threads
from fastadapt.training.config import Config
from fastadapt.training.runs import evaluate_learner, train

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
    import fastadapt.training.runs as runs
    original = runs.evaluate

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(runs, "evaluate", recording)
    with threads.using_threads(2):
        evaluate_learner(cfg, learner)
        assert torch.get_num_threads() == 2
    assert seen == [1]
