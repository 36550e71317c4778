"""The speed benchmark on a tiny setting: its table, its isolated measurements, its ratios and targets, its
roofline, and its reference implementations, which must compute the same meta-gradients as ours for the
speed-up to mean anything."""
import json
import re
import subprocess
import sys

import pytest
import torch

from fastadapt.cli import main
from fastadapt.benchmarks.speed import (CAPTURED, Measurement, Spec, gradient_differences, largest_convolution, measure,
                                        plan, quantities, report, run)

TINY = ["--no-isolate", "--meta-batch-sizes", "2", "3", "--hidden", "8", "--repeats", "1", "--warmup", "0",
        "--threads", "1", "--matmul-size", "64", "--tasks-per-pass", "1"]


@pytest.mark.parametrize("pooling", ["stride", "max"])
def test_reference_and_ours_compute_the_same_meta_gradient(pooling):
    differences = gradient_differences(meta_batch=3, hidden=8, dtype=torch.float64, pooling=pooling)
    assert set(differences) == {"maml", "fomaml", "protonet"}
    for method, (difference, scale) in differences.items():
        assert scale > 0, method
        assert difference <= 1e-9 * scale, (method, difference, scale)


def test_bench_speed_prints_every_setting_ratio_ceiling_and_target(capsys):
    assert main(["bench", "speed", *TINY, "--layout-control"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastadapt speed benchmark: ")
    assert re.search(r"^bf16: (NOT )?native on this CPU", out, re.M)
    for precision in ("fp32", "bf16"):
        assert re.search(rf"^  {precision}: 64x64 matmul [\d.]+; strided Conv-4's largest convolution "
                         rf"\(8->8 channels 3x3 stride 2, 14x14 -> 7x7\) [\d.]+; max-pooling Conv-4's largest "
                         rf"convolution \(8->8 channels 3x3 stride 1, 14x14 -> 14x14\) [\d.]+$", out, re.M), precision
    assert re.search(r"MAML 5-way 1-shot, 15 queries a class, 1 inner step, meta-batch 2 \(160 images\), strided "
                     r"Conv-4 \(the MAML paper's Omniglot network\); [\d.]+ GFLOP a 2nd-order step", out)
    assert "Prototypical Networks, one 60-way 5-shot episode, 5 queries a class (600 images), max-pooling" in out
    number = r"\s+[\d.]+"
    for row in ("ours, 2nd order", "ours, 2nd order, bf16", "ours, 2nd order, memory-saving: 1 task a pass",
                "reference loop over tasks, 2nd order", "ours, 1st order", "reference loop over tasks, 1st order",
                "floor: plain training step on the same images", "ours, bf16", "reference (as Snell et al.'s code)"):
        # time, steps/s, peak memory, GFLOP/s and the fraction of the ceiling on every row
        assert re.search(rf"^  {re.escape(row)}{number * 4}\s+\d+%$", out, re.M), row
    assert out.count("    the same on channels-last tensors ") == 4
    assert len(re.findall(r"^  ours, 2nd order, bf16\s+\d", out, re.M)) == 1  # at the first meta-batch size only
    assert len(re.findall(r"^  ours, 2nd order, memory-saving: 1 task a pass\s+\d", out, re.M)) == 1  # the largest
    for ratio in ("-> ours, 2nd order: speed-up", "-> ours, 1st order: speed-up", "-> ours: speed-up",
                  "-> ours, 2nd order, bf16: ", "-> ours, bf16: ",
                  "-> ours, 2nd order, memory-saving: 1 task a pass: "):
        assert ratio in out, ratio
    assert out.count("over the channels-last reference") == 4
    for target in ("target maml meta-batch 2: speed-up >= 1.3", "target fomaml meta-batch 3: floor <= 1.3",
                   "target maml meta-batch 2: bf16 speed-up >= 2.5", "target protonet: bf16 speed-up >= 2.5",
                   "target maml meta-batch 3: memory-saving time / ours <= 1.3",
                   "target maml meta-batch 2: fraction of the fp32 ceiling >= 0.5"):
        assert target in out, target
    assert "meta-gradient check" in out and "protonet max |diff|" in out


def test_ratios_and_targets_from_given_measurements():
    def measured(method, impl, seconds, peak, flops=None, **variant):
        return Measurement(Spec(method, impl, 32, **variant), [seconds], peak, flops)

    rows = [measured("maml", "ours", 1.0, 400), measured("maml", "reference", 1.5, 800, flops=30e9),
            measured("maml", "ours", 4.0, 300, precision="bf16"), measured("maml", "ours", 1.2, 100, tasks_per_pass=8),
            measured("maml", "floor", 0.8, 900, flops=20e9)]
    conv = str(largest_convolution("stride", 64))
    rates = {("matmul", "fp32"): 40.0, (conv, "fp32"): 60.0, ("matmul", "bf16"): 1.0, (conv, "bf16"): 5.0}
    values = quantities(rows, rates)[("maml", 32)]
    assert values == pytest.approx({"speed-up": 1.5, "floor": 1.25, "bf16 speed-up": 0.25,
                                    "peak memory / reference's": 0.5, "memory-saving peak / reference's": 0.125,
                                    "memory-saving time / ours": 1.2, "fraction of the fp32 ceiling": 0.5})
    text = report(rows, "results", rates=rates, native_bf16=False)
    assert re.search(r"^  ours, 2nd order\s+1000.0\s+1.00\s+0\s+30.0\s+50%$", text, re.M)  # 30 GFLOP/s of 60
    assert re.search(r"^  ours, 2nd order, bf16\s+4000.0\s+0.25\s+0\s+7.5\s+150%$", text, re.M)  # of bf16's 5
    assert "target maml meta-batch 32: speed-up >= 1.3: 1.50 met" in text
    assert "target maml meta-batch 32: peak memory / reference's <= 1.0: 0.50 met" in text
    assert "target maml meta-batch 32: memory-saving peak / reference's <= 0.5: 0.12 met" in text
    assert "target maml meta-batch 32: fraction of the fp32 ceiling >= 0.5: 0.50 met" in text
    assert ("target maml meta-batch 32: bf16 speed-up >= 2.5: 0.25 NOT met (blocked by hardware: no native bf16 "
            "arithmetic here; needs a CPU with AMX or AVX512-BF16, or a GPU)") in text
    assert "blocked" not in report(rows, "results", rates=rates, native_bf16=True)


def test_the_captured_step_is_a_row_of_its_own_compared_with_the_eager_step_and_with_fp32():
    def measured(impl, seconds, **variant):
        return Measurement(Spec("maml", impl, 32, **variant), [seconds], 100)

    eager = [measured("ours", 1.0), measured("reference", 2.0)]
    rows = eager + [measured(CAPTURED, 0.25), measured(CAPTURED, 0.2, precision="bf16")]
    text = report(rows, "results")
    assert re.search(r"^  ours, 2nd order, captured in a CUDA graph\s+250.0\s+4.00\s", text, re.M)
    assert "  -> ours, 2nd order, captured in a CUDA graph: 4.00x the speed of the eager step" in text
    assert "  -> ours, 2nd order, captured in a CUDA graph, bf16: 1.25x the speed of fp32, both captured" in text
    assert quantities(rows, {}) == quantities(eager, {})  # the eager rows' quantities and targets as before
    planned = [(s.impl, s.meta_batch, s.precision) for s in plan([4, 128], precisions=("fp32", "bf16"), captured=True)
               if s.impl == CAPTURED]
    assert planned == [(CAPTURED, 4, "fp32"), (CAPTURED, 128, "fp32"), (CAPTURED, 128, "bf16")]
    assert not any(s.impl == CAPTURED for s in plan([4, 128]))


@pytest.mark.parametrize("pooling, stride, size, flops", [("stride", 2, 14, 2 * 64 * 64 * 9 * 7 * 7),
                                                           ("max", 1, 14, 2 * 64 * 64 * 9 * 14 * 14)])
def test_largest_convolution_is_the_second_block(pooling, stride, size, flops):
    conv = largest_convolution(pooling, 64)
    assert (conv.in_channels, conv.out_channels, conv.stride, conv.size, conv.flops_per_image) == (
        64, 64, stride, size, flops)


def test_flops_are_counted_on_the_reference_and_the_floor_only():
    common = dict(hidden=8, repeats=1, warmup=0)
    floor = measure(Spec("maml", "floor", 2, **common))
    reference = measure(Spec("maml", "reference", 2, **common))
    assert measure(Spec("maml", "ours", 2, **common)).flops is None
    # The floor: every convolution forward, and backward (input and weight gradients, but no input gradient
    # for the images), over 2 tasks x 80 images, plus the head's matrix products.
    convolutions = [2 * 8 * 1 * 9 * 14 * 14, 2 * 8 * 8 * 9 * 7 * 7, 2 * 8 * 8 * 9 * 4 * 4, 2 * 8 * 8 * 9 * 2 * 2]
    head = 2 * 8 * 5
    expected = 160 * (3 * sum(convolutions) - convolutions[0] + 3 * head)
    assert floor.flops == expected
    assert reference.flops > floor.flops  # the inner loop's forward, backward and their backward on top


def test_bench_speed_rejects_an_unknown_device(capsys):
    assert main(["bench", "speed", "--device", "tpu", "--no-isolate"]) == 2
    assert "--device must be cpu or cuda" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is read from /proc")
def test_isolated_measurement_reports_time_and_memory():
    (measured,) = run([Spec("maml", "floor", 2, hidden=8, repeats=2, warmup=0)])
    assert len(measured.seconds) == 2 and measured.step > 0
    assert measured.peak_bytes is not None and measured.peak_bytes > 0  # a step allocates


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is read from /proc")
def test_peak_memory_sees_a_block_allocated_and_freed_inside_and_nothing_else():
    """In a fresh process, as the benchmark measures (in one that has freed memory before, a new block may land
    on pages still resident and not raise the high-water mark: after this file's other tests it once read 0)."""
    script = """
import json, torch
from fastadapt.benchmarks.speed import PeakMemory
with PeakMemory(torch.device("cpu")) as peak:
    block = torch.ones(16 * 2**20)  # 64 MiB, written
    del block
with PeakMemory(torch.device("cpu")) as idle:
    pass
print(json.dumps([peak.bytes, idle.bytes]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    peak, idle = json.loads(done.stdout)
    if peak is None:
        pytest.skip("/proc/self/status has no VmHWM here")
    assert 60 * 2**20 <= peak <= 80 * 2**20, peak
    assert idle < 8 * 2**20, idle
