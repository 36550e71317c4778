"""MuJoCo is an optional extra: without it fastadapt imports and works, and the MuJoCo commands say what to install.
(These tests run whether or not MuJoCo is installed; the MuJoCo tests themselves are in test_locomotion.py.)"""
import importlib.util
import subprocess
import sys

from fastadapt.cli import main


def test_the_core_never_imports_mujoco():
    code = ("import sys, fastadapt.cli, fastadapt.runs.directory, fastadapt.tasks, fastadapt.environments, "
            "fastadapt.benchmarks.rollout_speed; sys.exit('mujoco' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_without_mujoco_the_locomotion_commands_name_the_extra_to_install(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mujoco" else real(name, *a))
    assert main(["train", "--algorithm", "maml-rl", "--tasks", "ant-direction", "--output-dir",
                 str(tmp_path / "r"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == ('fastadapt: error: --tasks ant-direction needs MuJoCo, which is not '
                                               'installed: pip install "fastadapt[mujoco]"')
    assert main(["bench", "rollout-speed"]) == 2
    assert 'pip install "fastadapt[mujoco]"' in capsys.readouterr().err
