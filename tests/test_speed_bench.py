"""The speed benchmark on a tiny setting: its table, its isolated measurements, and its reference
implementations, which must compute the same meta-gradients as ours for the speed-up to mean anything."""
import sys

import pytest
import torch

from fastadapt.cli import main
from fastadapt.benchmarks.speed import Spec, gradient_differences, run

TINY = ["--no-isolate", "--meta-batch-sizes", "2", "--hidden", "8", "--repeats", "1", "--warmup", "0",
        "--threads", "1"]


def test_reference_and_ours_compute_the_same_meta_gradient():
    differences = gradient_differences(meta_batch=3, hidden=8, dtype=torch.float64)
    assert set(differences) == {"maml", "fomaml", "protonet"}
    for method, (difference, scale) in differences.items():
        assert scale > 0, method
        assert difference <= 1e-9 * scale, (method, difference, scale)


def test_bench_speed_prints_every_setting_and_ratio(capsys):
    assert main(["bench", "speed", *TINY, "--layout-control"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastadapt speed benchmark: ")
    assert "MAML 5-way 1-shot, 15 queries a class, 1 inner step, meta-batch 2 (160 images)" in out
    assert "Prototypical Networks, one 60-way 5-shot episode, 5 queries a class (600 images)" in out
    for row in ("ours, 2nd order", "reference loop over tasks, 2nd order", "ours, 1st order",
                "reference loop over tasks, 1st order", "floor: plain training step on the same images",
                "reference (as Snell et al.'s code)"):
        assert f"  {row} " in out, row
    assert out.count("    the same on channels-last tensors ") == 2
    for ratio in ("-> ours, 2nd order: speed-up", "-> ours, 1st order: speed-up", "-> ours: speed-up"):
        assert ratio in out, ratio
    assert out.count("over the channels-last reference") == 2
    assert out.count("target maml meta-batch 2") == 2 and "target fomaml meta-batch 2: floor <= 1.3" in out
    assert "meta-gradient check" in out and "protonet max |diff|" in out


def test_bench_speed_rejects_an_unknown_device(capsys):
    assert main(["bench", "speed", "--device", "tpu", "--no-isolate"]) == 2
    assert "--device must be cpu or cuda" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is read from /proc")
def test_isolated_measurement_reports_time_and_memory():
    (measured,) = run([Spec("maml", "floor", 2, hidden=8, repeats=2, warmup=0)])
    assert len(measured.seconds) == 2 and measured.step > 0
    assert measured.peak_bytes is not None and measured.peak_bytes >= 0
