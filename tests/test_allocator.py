"""The allocator setting keeps freed memory: once warm, training steps stop faulting in fresh pages."""
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from torch import nn
from fastadapt.allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory() and reuse_freed_memory()
if sys.argv[1] == "network":  # building one of fastadapt's networks applies the setting, as the trainer does
    from fastadapt.models import MLP
    MLP()
torch.set_num_threads(1)
layers = [nn.Sequential(nn.Conv2d(c, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()) for c in (1, 64, 64, 64)]
model, images = nn.Sequential(*layers), torch.rand(180, 1, 28, 28)  # 36 MB a layer
def step():
    model(images).pow(2).sum().backward()
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_warm_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    faults = {mode: int(subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "reuse", "network")}
    assert faults["default"] > 50_000  # hundreds of MB unmapped and faulted in again every step
    assert faults["reuse"] < faults["default"] / 10, faults
    assert faults["network"] < faults["default"] / 10, faults
