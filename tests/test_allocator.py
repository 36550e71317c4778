"""The allocator setting keeps freed memory: once warm, training steps stop faulting in fresh pages."""
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from fastadapt.models import Conv4
from fastadapt.training.allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory() and reuse_freed_memory()
torch.set_num_threads(1)
model, images = Conv4(norm="batch", channels_last=True), torch.rand(360, 1, 28, 28)  # 72 MB a layer
def step():
    model(images).pow(2).sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_warm_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    faults = {mode: int(subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "reuse")}
    assert faults["default"] > 50_000  # hundreds of MB unmapped and faulted in again every step
    assert faults["reuse"] < faults["default"] / 10, faults
