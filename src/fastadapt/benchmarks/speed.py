"""How fast a meta-training step runs, and how far from the hardware's limit: ours, a textbook per-task loop, a
plain-training floor, and the machine's own fp32 and bf16 ceilings, measured in the same run.

Settings, on Omniglot-shaped data (1x28x28 images, Conv-4 with 64 channels):

* MAML, 5-way 1-shot with 15 queries a class, one inner step, second order and first order, meta-batch B, on
  the network the MAML-family presets train: the MAML paper's Omniglot Conv-4 with stride-2 convolutions
  (``--pooling max`` for max-pooling Conv-4);
* Prototypical Networks, one 60-way 5-shot episode with 5 queries a class (Snell et al.'s training episodes),
  on max-pooling Conv-4, the network of its presets.

For each, three implementations run full steps (meta-loss, backward, Adam step) on tasks sampled beforehand:

* ours: the learner ``fastadapt train`` builds for the method (``build_learner``: Conv-4 with the norm and
  memory layout the library picks), stepped by ``Trainer.step`` as in training;
* reference: the straightforward code most public implementations use, written out below, on Conv-4 in
  PyTorch's default (NCHW) memory layout, as that code runs;
* floor: one ordinary forward+backward+Adam step of Conv-4 with an N-way head over all the images of the
  meta-batch, support and query: plain training on the same images, with no adaptation, in the faster
  channels-last layout. On a CPU the per-task implementations can beat it: one call over thousands of
  images streams its activations through main memory, where a call per task keeps them in cache.

Variants of ours: ``--precisions fp32 bf16`` adds ours in bf16 mixed precision (``--precision bf16``; MAML
second order at the first meta-batch size, and Prototypical Networks); ``--tasks-per-pass N`` adds second-order
MAML at the largest meta-batch size in the memory-saving mode (``--tasks-per-pass N``: N tasks a forward and
backward pass, gradients accumulated). How much of the speed-up is layout rather than batching over tasks:
``--layout-control`` adds the reference loop run on channels-last images and weights (MAML only).

Roofline: the FLOPs of a step are counted once per setting with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matrix products, forward and backward) on the reference loop, the same arithmetic as ours,
and on the floor. (Counting ours directly would overcount: torch's formula for the weight gradient of a grouped
convolution, which vmap makes of a per-task convolution, ignores the groups.) The ceilings are the best
GFLOP/s this machine reaches, in the same run and with the same threads, on a large matrix product and on the
network's largest convolution (forward, channels-last), in fp32 and in bf16; every row shows its GFLOP/s and
their fraction of the ceiling of its precision (the larger of the two).

Every measurement runs in a fresh process, so no allocator state or warm cache carries over from the
previous one; it reports the median step time over ``repeats`` steps after ``warmup`` steps, and the peak
memory above the level before the first step (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the growth of
the resident set's high-water mark, Linux only).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from fastadapt.allocator import reuse_freed_memory
from fastadapt.config.schema import Config
from fastadapt.datasets import ClassDataset, load_omniglot
from fastadapt.models import Conv4
from fastadapt.runs.directory import build_learner
from fastadapt.tasks import EpisodeTasks, TaskBatch
from fastadapt.training.precision import PRECISIONS, has_native_bf16
from fastadapt.training.trainer import Trainer

IMPLEMENTATIONS = ("ours", "reference", "floor")
#: the reference loop on channels-last tensors: the part of the speed-up that is memory layout alone
LAYOUT_CONTROL = "reference-cl"
#: ours with the whole step captured in one CUDA graph (training.captured); measured on CUDA devices only
CAPTURED = "captured"
#: Prototypical Networks' network (Snell et al.): max-pooling Conv-4
PROTONET_POOLING = "max"
NETWORK_NAMES = {"stride": "strided Conv-4", "max": "max-pooling Conv-4"}
INNER_LR = 0.4  # Finn et al.'s Omniglot step size
META_LR = 1e-3
#: the size of the ceiling's square matrix product: large enough to reach a device's peak
MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}
#: images in the ceiling's convolution
CONVOLUTION_BATCH = {"cpu": 512, "cuda": 8192}


@dataclass(frozen=True)
class Benchmarked:
    """A method this benchmark measures and the reference code it is compared with (all it knows of it)."""

    #: (n_way, k_shot, queries per class)
    episodes: tuple[int, int, int]
    #: the reference implementation's meta-loss of a batch, through the given network
    reference_loss: Callable[[nn.Module, TaskBatch], torch.Tensor]
    #: the reference network is an embedding with standard batch normalisation (Snell et al.'s code; ours:
    #: ``learner.encoder``), not a classifier with per-task batch statistics (Finn et al.'s; ours: ``learner.model``)
    embeds: bool
    #: the label of its reference row, and what its own rows add to "ours"
    reference: str
    order: str = ""
    #: the method whose floor row (a plain step on the same images) it is compared with; None: its own
    floor: str | None = None
    #: its Conv-4's pooling; None: the benchmark's --pooling
    pooling: str | None = None
    #: measured on one episode (as Snell et al.'s code steps), not on meta-batches of each size
    one_episode: bool = False

    @property
    def norm(self) -> str:
        """The normalisation of the reference network and of the floor's."""
        return "batch" if self.embeds else "transductive"


BENCHMARKED = {
    "maml": Benchmarked((5, 1, 15), lambda model, batch: reference_maml_loss(model, batch, INNER_LR, 1, False),
                        False, "reference loop over tasks, 2nd order", ", 2nd order"),
    "fomaml": Benchmarked((5, 1, 15), lambda model, batch: reference_maml_loss(model, batch, INNER_LR, 1, True),
                          False, "reference loop over tasks, 1st order", ", 1st order", floor="maml"),
    "protonet": Benchmarked((60, 5, 5), lambda model, batch: reference_protonet_loss(model, batch, 60, 5), True,
                            "reference (as Snell et al.'s code)", pooling=PROTONET_POOLING, one_episode=True),
}


@dataclass(frozen=True)
class Target:
    """What this benchmark was written to show: ``quantity`` of ``method`` (at ``meta_batch``, None for every size
    measured; on ``device``, None for any) must reach ``bound`` (``at_least``) or stay under it."""

    method: str
    quantity: str
    bound: float
    at_least: bool
    device: str | None = None
    meta_batch: int | None = None


TARGETS = [
    Target("maml", "speed-up", 1.3, True, "cpu"),
    Target("maml", "floor", 2.0, False, "cpu"),
    Target("fomaml", "floor", 1.3, False, "cpu"),
    Target("maml", "speed-up", 5.0, True, "cuda", 32),
    Target("maml", "bf16 speed-up", 2.5, True),
    Target("protonet", "bf16 speed-up", 2.5, True),
    Target("maml", "peak memory / reference's", 1.0, False),
    Target("maml", "memory-saving peak / reference's", 0.5, False),
    Target("maml", "memory-saving time / ours", 1.3, False),
    Target("maml", "fraction of the fp32 ceiling", 0.5, True),
]
#: the quantities only hardware with native bf16 arithmetic can reach
NEEDS_NATIVE_BF16 = frozenset({"bf16 speed-up"})


@dataclass(frozen=True)
class Spec:
    """One measurement."""

    method: str
    impl: str
    meta_batch: int
    device: str = "cpu"
    threads: int = 1
    repeats: int = 5
    warmup: int = 1
    hidden: int = 64
    pooling: str = "stride"
    precision: str = "fp32"
    tasks_per_pass: int | None = None
    data_root: str | None = None
    seed: int = 0

    @property
    def key(self) -> tuple:
        return self.method, self.impl, self.meta_batch, self.precision, self.tasks_per_pass

    @property
    def counts_flops(self) -> bool:
        """FLOPs are counted on the reference loop (the same arithmetic as ours) and on the floor."""
        return self.impl in ("reference", "floor")


@dataclass(frozen=True)
class Measurement:
    spec: Spec
    seconds: list[float]
    peak_bytes: int | None
    flops: int | None = None

    @property
    def step(self) -> float:
        return statistics.median(self.seconds)


# --- the reference implementations: deliberately plain, one task at a time ---
def reference_maml_loss(model: nn.Module, batch: TaskBatch, inner_lr: float, steps: int,
                        first_order: bool) -> torch.Tensor:
    """MAML as most public code writes it: a Python loop over tasks, torch.autograd.grad(create_graph=True)."""
    params = dict(model.named_parameters())
    total = 0.0
    for t in range(batch.num_tasks):
        fast = params
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {name: p - inner_lr * g for (name, p), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
    return total / batch.num_tasks


def reference_protonet_loss(encoder: nn.Module, batch: TaskBatch, n_way: int, k_shot: int) -> torch.Tensor:
    """Snell et al.'s published code, per episode: one encoder call on support and query, prototypes as
    means over each class's support (stored class by class), squared distances by broadcasting."""
    total = 0.0
    for t in range(batch.num_tasks):
        z = encoder(torch.cat([batch.support_x[t], batch.query_x[t]]))
        prototypes = z[: n_way * k_shot].view(n_way, k_shot, -1).mean(1)
        distances = (z[n_way * k_shot :].unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(2)
        total = total + F.cross_entropy(-distances, batch.query_y[t])
    return total / batch.num_tasks


# --- building one measurement ---
def omniglot_like(num_classes: int = 100, images_per_class: int = 20, seed: int = 0) -> ClassDataset:
    """Random sparse 'strokes' with Omniglot's shapes (uint8 1x28x28): speed does not depend on the pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(num_classes * images_per_class, 1, 28, 28, generator=generator) < 0.15).to(torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(images_per_class)
    return ClassDataset(images * 255, labels, [f"class{i}" for i in range(num_classes)])


def _tasks(method: str, data_root: str | None, seed: int) -> EpisodeTasks:
    dataset = load_omniglot(data_root, download=False) if data_root else omniglot_like(seed=seed)
    return EpisodeTasks(dataset, *BENCHMARKED[method].episodes)


def _config(spec: Spec, tasks: EpisodeTasks) -> Config:
    """The run settings ``fastadapt train`` would get for this measurement."""
    return Config(algorithm=spec.method, tasks="omniglot", n_way=tasks.n_way, k_shot=tasks.k_shot,
                  num_query=tasks.num_query, conv_channels=spec.hidden, pooling=spec.pooling, inner_lr=INNER_LR,
                  inner_steps=1, meta_lr=META_LR, meta_batch_size=spec.meta_batch, device=spec.device,
                  precision=spec.precision, tasks_per_pass=spec.tasks_per_pass,
                  cuda_graph="on" if spec.impl == CAPTURED else "off")


def _reference_model(spec: Spec, tasks: EpisodeTasks, channels_last: bool) -> nn.Module:
    """Conv-4 as the reference code builds it: a classifier for MAML (per-task batch statistics, as Finn et
    al.'s), an embedding with standard batch normalisation for Prototypical Networks (as Snell et al.'s)."""
    method = BENCHMARKED[spec.method]
    return Conv4(hidden=spec.hidden, output_size=None if method.embeds else tasks.n_way, norm=method.norm,
                 channels_last=channels_last, pooling=spec.pooling)


def _adam_steps(module: nn.Module, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.Adam(module.parameters(), lr=META_LR)

    def step() -> None:
        value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step


def _step_function(spec: Spec, tasks: EpisodeTasks, batch: TaskBatch) -> Callable[[], object]:
    torch.manual_seed(spec.seed)
    if spec.impl == "floor":
        model = Conv4(hidden=spec.hidden, output_size=tasks.n_way, norm=BENCHMARKED[spec.method].norm,
                      channels_last=True, pooling=spec.pooling).to(spec.device)
        images = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
        labels = torch.cat([batch.support_y, batch.query_y], 1).flatten()
        return _adam_steps(model, lambda: F.cross_entropy(model(images), labels))
    if spec.impl in ("ours", CAPTURED):
        cfg = _config(spec, tasks)
        with warnings.catch_warnings():  # bf16 without native support: the report's header says so
            warnings.simplefilter("ignore")
            trainer = Trainer(cfg, build_learner(cfg, tasks), tasks, device=spec.device, progress=False)
        if spec.impl == CAPTURED:  # the same tasks as ``batch``, as the dataset indices the captured step reads
            if trainer.captured is None:
                raise ValueError(f"the captured step needs a CUDA device, not {spec.device}")
            indices = tasks.sample_indices(spec.meta_batch, torch.Generator().manual_seed(spec.seed))
            return lambda: trainer.captured.step(indices)
        return lambda: trainer.step(batch)
    # The layout control's Conv-4 turns its weights and every input channels-last itself.
    model = _reference_model(spec, tasks, channels_last=spec.impl == LAYOUT_CONTROL).to(spec.device)
    return _adam_steps(model, lambda: BENCHMARKED[spec.method].reference_loss(model, batch))


class PeakMemory:
    """Peak memory above the level on entry: the CUDA allocator's, or (Linux) the resident set's high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            try:  # reset the high-water mark to the current resident set (Linux >= 4.0; may be refused)
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                pass
            self.start = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        elif self.start is not None:
            peak = _proc_status_bytes("VmHWM")
            self.bytes = None if peak is None else max(0, peak - self.start)


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: Spec) -> Measurement:
    """Time ``spec.repeats`` steps after ``spec.warmup`` untimed ones (the first vmapped call is slower); then,
    for the reference and the floor, count one more step's FLOPs.

    Every implementation runs with the allocator setting fastadapt's trainer uses (``reuse_freed_memory``),
    so the ratios compare the algorithms, not the allocators.
    """
    reuse_freed_memory()
    torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    tasks = _tasks(spec.method, spec.data_root, spec.seed)
    batch = tasks.sample(spec.meta_batch, torch.Generator().manual_seed(spec.seed)).to(device)
    step = _step_function(spec, tasks, batch)
    seconds = []
    with PeakMemory(device) as peak:
        for _ in range(spec.warmup):
            step()
        _synchronize(device)
        for _ in range(spec.repeats):
            start = time.perf_counter()
            step()
            _synchronize(device)
            seconds.append(time.perf_counter() - start)
    flops = None
    if spec.counts_flops:
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    return Measurement(spec, seconds, peak.bytes, flops)


# --- the machine's ceilings ---
@dataclass(frozen=True)
class Convolution:
    """A 3x3 convolution (padding 1) of a network, and its FLOPs on one image."""

    in_channels: int
    out_channels: int
    size: int
    stride: int
    flops_per_image: int

    def __str__(self) -> str:
        out = (self.size - 1) // self.stride + 1
        return (f"{self.in_channels}->{self.out_channels} channels 3x3 stride {self.stride}, "
                f"{self.size}x{self.size} -> {out}x{out}")


def largest_convolution(pooling: str, hidden: int, image_size: int = 28, in_channels: int = 1) -> Convolution:
    """The convolution of Conv-4 with the most FLOPs on one image."""
    model = Conv4(in_channels, hidden, pooling=pooling, norm="batch")
    found = []

    def record(module: nn.Conv2d, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        flops = 2 * module.weight.numel() * output.shape[2] * output.shape[3]
        found.append(Convolution(module.in_channels, module.out_channels, inputs[0].shape[2], module.stride[0], flops))

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(record)
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_channels, image_size, image_size))
    return max(found, key=lambda c: c.flops_per_image)


def _best_rate(work: Callable[[], object], flops: float, device: torch.device, min_runs: int = 3,
               max_runs: int = 10, min_seconds: float = 1.0) -> float:
    """The best GFLOP/s of ``work`` over at least ``min_runs`` timed runs (more while under ``min_seconds``)."""
    work()
    _synchronize(device)
    best, total, runs = float("inf"), 0.0, 0
    while runs < min_runs or (total < min_seconds and runs < max_runs):
        start = time.perf_counter()
        work()
        _synchronize(device)
        elapsed = time.perf_counter() - start
        best, total, runs = min(best, elapsed), total + elapsed, runs + 1
    return flops / best / 1e9


def measure_ceilings(device: str, threads: int, convolutions: Sequence[Convolution],
                     matmul_size: int | None = None) -> dict[tuple[str, str], float]:
    """GFLOP/s of a square matrix product and of each convolution (forward, channels-last, on a batch of
    images), in fp32 and bf16: {(what, precision): GFLOP/s}, what being "matmul" or ``str(convolution)``."""
    torch.set_num_threads(threads)
    device_ = torch.device(device)
    n = matmul_size or MATMUL_SIZE[device_.type]
    batch = CONVOLUTION_BATCH[device_.type]
    rates = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=device_, dtype=dtype) for _ in range(2))
        rates["matmul", precision] = _best_rate(lambda: a @ b, 2 * n**3, device_)
        for conv in convolutions:
            x = torch.randn(batch, conv.in_channels, conv.size, conv.size, device=device_, dtype=dtype)
            weight = torch.randn(conv.out_channels, conv.in_channels, 3, 3, device=device_, dtype=dtype)
            x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
            rates[str(conv), precision] = _best_rate(
                lambda: F.conv2d(x, weight, stride=conv.stride, padding=1), batch * conv.flops_per_image, device_)
    return rates


def gradient_differences(meta_batch: int = 4, hidden: int = 64, device: str = "cpu",
                         dtype: torch.dtype = torch.float32, data_root: str | None = None, seed: int = 0,
                         pooling: str = "stride") -> dict[str, tuple[float, float]]:
    """max |ours - reference| and max |reference| over the meta-gradient of each method, from the same weights."""
    differences = {}
    for method, benchmarked in BENCHMARKED.items():
        tasks = _tasks(method, data_root, seed)
        batch = tasks.sample(1 if benchmarked.one_episode else meta_batch, torch.Generator().manual_seed(seed))
        batch = TaskBatch(batch.support_x.to(device, dtype), batch.support_y.to(device),
                          batch.query_x.to(device, dtype), batch.query_y.to(device))
        spec = Spec(method, "ours", batch.num_tasks, device, hidden=hidden,
                    pooling=benchmarked.pooling or pooling)
        learner = build_learner(_config(spec, tasks), tasks).to(device, dtype)
        params = [p for p in learner.parameters() if p.requires_grad]
        ours = torch.autograd.grad(learner.meta_loss(batch)[0], params)
        model = learner.encoder if benchmarked.embeds else learner.model
        reference = torch.autograd.grad(benchmarked.reference_loss(model, batch), params)
        differences[method] = (max((a - b).abs().max().item() for a, b in zip(ours, reference)),
                               max(b.abs().max().item() for b in reference))
    return differences


# --- running and reporting ---
def plan(meta_batch_sizes: Sequence[int], layout_control: bool = False, precisions: Sequence[str] = ("fp32",),
         tasks_per_pass: int | None = None, pooling: str = "stride", captured: bool = False,
         **common: object) -> list[Spec]:
    """The measurements of one benchmark run: per meta-batch size MAML and FOMAML (ours, reference, and with
    ``layout_control`` the reference on channels-last tensors) and one floor (the same images serve both), with
    ours in bf16 (second order, first meta-batch size) and in memory-saving mode (second order, largest
    meta-batch size) where asked, and with ``captured`` (a CUDA device) second-order MAML captured in a CUDA
    graph at every size (in bf16 too at the largest); then one Prototypical Networks episode (ours, in bf16 too
    where asked, reference, floor)."""
    references = ("reference", LAYOUT_CONTROL) if layout_control else ("reference",)
    bf16 = "bf16" in precisions
    specs = []
    for size in meta_batch_sizes:
        maml = Spec("maml", "ours", size, pooling=pooling, **common)
        specs.append(maml)
        if bf16 and size == meta_batch_sizes[0]:
            specs.append(replace(maml, precision="bf16"))
        if tasks_per_pass and tasks_per_pass < size and size == max(meta_batch_sizes):
            specs.append(replace(maml, tasks_per_pass=tasks_per_pass))
        if captured:
            specs.append(replace(maml, impl=CAPTURED))
            if bf16 and size == max(meta_batch_sizes):
                specs.append(replace(maml, impl=CAPTURED, precision="bf16"))
        specs += [Spec("maml", impl, size, pooling=pooling, **common) for impl in references]
        specs += [Spec("fomaml", impl, size, pooling=pooling, **common) for impl in ("ours", *references)]
        specs.append(Spec("maml", "floor", size, pooling=pooling, **common))
    protonet = [Spec("protonet", impl, 1, pooling=PROTONET_POOLING, **common) for impl in IMPLEMENTATIONS]
    if bf16:
        protonet.insert(1, replace(protonet[0], precision="bf16"))
    return specs + protonet


def run(specs: Sequence[Spec], isolate: bool = True, log: Callable[[str], None] | None = None) -> list[Measurement]:
    """Measure every spec, each in a fresh spawned process unless ``isolate`` is false."""
    if isolate:
        with get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            return _collect(pool.imap(measure, specs, chunksize=1), log)
    return _collect(map(measure, specs), log)


def ceilings(device: str, threads: int, convolutions: Sequence[Convolution], matmul_size: int | None = None,
             isolate: bool = True) -> dict[tuple[str, str], float]:
    """``measure_ceilings`` in a fresh spawned process unless ``isolate`` is false."""
    if isolate:
        with get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            return pool.apply(measure_ceilings, (device, threads, convolutions, matmul_size))
    return measure_ceilings(device, threads, convolutions, matmul_size)


def _collect(measurements: Iterable[Measurement], log: Callable[[str], None] | None) -> list[Measurement]:
    collected = []
    for m in measurements:
        collected.append(m)
        if log:
            log(f"  measured {_label(m.spec).strip()} ({m.spec.method}, meta-batch {m.spec.meta_batch}): "
                f"{m.step * 1e3:.0f} ms/step")
    return collected


def _label(spec: Spec) -> str:
    if spec.impl == "floor":
        return "floor: plain training step on the same images"
    if spec.impl == LAYOUT_CONTROL:
        return "  the same on channels-last tensors"
    order = BENCHMARKED[spec.method].order
    if spec.impl == "reference":
        return BENCHMARKED[spec.method].reference
    variant = ", captured in a CUDA graph" if spec.impl == CAPTURED else ""
    if spec.precision != "fp32":
        variant += f", {spec.precision}"
    if spec.tasks_per_pass:
        variant += f", memory-saving: {spec.tasks_per_pass} task{'s' if spec.tasks_per_pass != 1 else ''} a pass"
    return f"ours{order}{variant}"


@dataclass(frozen=True)
class Setting:
    """A block of the report: its title, its measurements in order, the network's ceiling convolution, and
    which measurement counts each row's FLOPs."""

    title: str
    rows: list[Measurement]
    convolution: Convolution
    flops_of: Callable[[Spec], int | None]


def _settings(measurements: Sequence[Measurement], hidden: int) -> list[Setting]:
    by_key = {m.spec.key: m for m in measurements}

    def counted(method: str, impl: str, size: int) -> int | None:
        found = by_key.get((method, impl, size, "fp32", None))
        return found.flops if found else None

    settings = []
    batched = [m for m in measurements if not BENCHMARKED[m.spec.method].one_episode]
    for size in sorted({m.spec.meta_batch for m in batched}):
        rows = [m for m in batched if m.spec.meta_batch == size]
        pooling = rows[0].spec.pooling
        n_way, k_shot, queries = BENCHMARKED["maml"].episodes
        network = NETWORK_NAMES[pooling] + (" (the MAML paper's Omniglot network)" if pooling == "stride" else "")
        flops = counted("maml", "reference", size)
        title = (f"MAML {n_way}-way {k_shot}-shot, {queries} queries a class, 1 inner step, meta-batch {size} "
                 f"({size * n_way * (k_shot + queries)} images), {network}"
                 + (f"; {flops / 1e9:.1f} GFLOP a 2nd-order step" if flops else ""))
        settings.append(Setting(title, rows, largest_convolution(pooling, hidden),
                                lambda spec, size=size: counted(spec.method, "floor" if spec.impl == "floor"
                                                                else "reference", size)))
    protonet = [m for m in measurements if BENCHMARKED[m.spec.method].one_episode]
    if protonet:
        n_way, k_shot, queries = BENCHMARKED["protonet"].episodes
        flops = counted("protonet", "reference", 1)
        title = (f"Prototypical Networks, one {n_way}-way {k_shot}-shot episode, {queries} queries a class "
                 f"({n_way * (k_shot + queries)} images), max-pooling Conv-4"
                 + (f"; {flops / 1e9:.1f} GFLOP a step" if flops else ""))
        settings.append(Setting(title, protonet, largest_convolution(PROTONET_POOLING, hidden),
                                lambda spec: counted("protonet", "floor" if spec.impl == "floor" else "reference", 1)))
    return settings


def _ceiling(rates: dict[tuple[str, str], float], convolution: Convolution, precision: str) -> float | None:
    found = [rates.get(("matmul", precision)), rates.get((str(convolution), precision))]
    return max((r for r in found if r), default=None)


def quantities(measurements: Sequence[Measurement],
               rates: dict[tuple[str, str], float] | None = None, hidden: int = 64) -> dict[tuple[str, int], dict]:
    """The ratios the targets bound, per (method, meta-batch size), where the measurements give them."""
    by_key = {m.spec.key: m for m in measurements}
    found: dict[tuple[str, int], dict[str, float]] = {}
    for m in measurements:
        spec = m.spec
        if spec.impl != "ours" or spec.precision != "fp32" or spec.tasks_per_pass:
            continue
        size, values = spec.meta_batch, {}
        reference = by_key.get((spec.method, "reference", size, "fp32", None))
        method = BENCHMARKED[spec.method]
        floor = by_key.get((method.floor or spec.method, "floor", size, "fp32", None))
        bf16 = by_key.get((spec.method, "ours", size, "bf16", None))
        saving = [other for other in measurements if other.spec.key[:4] == spec.key[:4] and other.spec.tasks_per_pass]
        if reference:
            values["speed-up"] = reference.step / m.step
            if m.peak_bytes and reference.peak_bytes:
                values["peak memory / reference's"] = m.peak_bytes / reference.peak_bytes
                for other in saving:
                    if other.peak_bytes:
                        values["memory-saving peak / reference's"] = other.peak_bytes / reference.peak_bytes
            if rates and reference.flops:
                pooling = method.pooling or spec.pooling
                ceiling = _ceiling(rates, largest_convolution(pooling, hidden), "fp32")
                if ceiling:
                    values["fraction of the fp32 ceiling"] = reference.flops / m.step / 1e9 / ceiling
        if floor:
            values["floor"] = m.step / floor.step
        if bf16:
            values["bf16 speed-up"] = m.step / bf16.step
        for other in saving:
            values["memory-saving time / ours"] = other.step / m.step
        found[spec.method, size] = values
    return found


def report(measurements: Sequence[Measurement], header: str,
           gradients: dict[str, tuple[float, float]] | None = None,
           rates: dict[tuple[str, str], float] | None = None, hidden: int = 64,
           native_bf16: bool = True) -> str:
    """Per setting: time per step, steps per second, peak memory, GFLOP/s and fraction of the ceiling of every
    row, then the ratios against the reference, the floor and fp32; then the targets."""
    by_key = {m.spec.key: m for m in measurements}
    lines = [header, "", f"{'':60s} {'ms/step':>9s} {'steps/s':>8s} {'peak MB':>8s} {'GFLOP/s':>8s} {'of peak':>8s}"]
    for setting in _settings(measurements, hidden):
        lines.append(setting.title)
        lines += _row_lines(setting, rates)
        lines += _ratio_lines(setting, by_key)
        lines.append("")
    lines.append("speed-up = reference time / our time; floor = our time / floor time; GFLOP/s = the FLOPs "
                 "counted on the reference loop (or the floor) / step time; of peak = the fraction of the "
                 "ceiling of the row's precision")
    if gradients:
        lines.append("meta-gradient check in float64, ours against the reference from the same weights: " + "; ".join(
            f"{method} max |diff| {diff:.1e} (max |grad| {scale:.1e})" for method, (diff, scale) in gradients.items()))
    return "\n".join(lines + _target_lines(measurements, rates, hidden, native_bf16))


def _row_lines(setting, rates: dict[tuple[str, str], float] | None) -> list[str]:
    """A setting's rows: time per step, steps per second, peak memory, GFLOP/s, fraction of the ceiling."""
    lines = []
    for m in setting.rows:
        peak = "-" if m.peak_bytes is None else f"{m.peak_bytes / 2**20:.0f}"
        flops = setting.flops_of(m.spec)
        achieved = fraction = "-"
        if flops:
            achieved = f"{flops / m.step / 1e9:.1f}"
            ceiling = _ceiling(rates or {}, setting.convolution, m.spec.precision)
            fraction = f"{flops / m.step / 1e9 / ceiling:.0%}" if ceiling else "-"
        lines.append(f"  {_label(m.spec):58s} {m.step * 1e3:9.1f} {1 / m.step:8.2f} {peak:>8s} "
                     f"{achieved:>8s} {fraction:>8s}")
    return lines


def _ratio_lines(setting, by_key: dict) -> list[str]:
    """For each of our fp32 rows of a setting: its speed-up over the reference and the channels-last control, its
    memory against the reference's, its time against the floor, and the speed of its captured, bf16 and
    memory-saving variants."""
    lines = []
    for m in setting.rows:
        spec = m.spec
        if spec.impl != "ours" or spec.precision != "fp32" or spec.tasks_per_pass:
            continue
        reference = by_key.get((spec.method, "reference", spec.meta_batch, "fp32", None))
        floor = by_key.get((BENCHMARKED[spec.method].floor or spec.method, "floor", spec.meta_batch, "fp32", None))
        parts = []
        if reference:
            parts.append(f"speed-up {reference.step / m.step:.2f}x over the reference")
            if m.peak_bytes and reference.peak_bytes:
                parts.append(f"peak memory {m.peak_bytes / reference.peak_bytes:.2f}x the reference's")
        if floor:
            parts.append(f"floor {m.step / floor.step:.2f}x")
        control = by_key.get((spec.method, LAYOUT_CONTROL, spec.meta_batch, "fp32", None))
        if control:
            parts.append(f"{control.step / m.step:.2f}x over the channels-last reference")
        if parts:
            lines.append(f"  -> {_label(spec)}: " + "; ".join(parts))
        graph = by_key.get((spec.method, CAPTURED, spec.meta_batch, "fp32", None))
        if graph:
            lines.append(f"  -> {_label(graph.spec)}: {m.step / graph.step:.2f}x the speed of the eager step")
            graph_bf16 = by_key.get((spec.method, CAPTURED, spec.meta_batch, "bf16", None))
            if graph_bf16:
                lines.append(f"  -> {_label(graph_bf16.spec)}: {graph.step / graph_bf16.step:.2f}x the speed "
                             "of fp32, both captured")
        for other in setting.rows:
            if other.spec.key[:2] != spec.key[:2] or other.spec.key[2] != spec.meta_batch or other is m:
                continue
            if other.spec.precision != "fp32":
                lines.append(f"  -> {_label(other.spec)}: {m.step / other.step:.2f}x the speed of fp32")
            elif other.spec.tasks_per_pass:
                memory = ""
                if other.peak_bytes and reference and reference.peak_bytes:
                    memory = f"peak memory {other.peak_bytes / reference.peak_bytes:.2f}x the reference's, "
                lines.append(f"  -> {_label(other.spec)}: {memory}step time {other.step / m.step:.2f}x ours")
    return lines


def _target_lines(measurements: Sequence[Measurement], rates: dict[tuple[str, str], float] | None, hidden: int,
                  native_bf16: bool) -> list[str]:
    """Each target of this device, met or not."""
    lines = []
    device = measurements[0].spec.device.split(":")[0] if measurements else "cpu"
    found = quantities(measurements, rates, hidden)
    for target in TARGETS:
        if target.device not in (None, device):
            continue
        for (method, size), values in sorted(found.items()):
            if method != target.method or target.meta_batch not in (None, size) or target.quantity not in values:
                continue
            value = values[target.quantity]
            met = value >= target.bound if target.at_least else value <= target.bound
            where = "" if BENCHMARKED[method].one_episode else f" meta-batch {size}"
            blocked = ""
            if not met and target.quantity in NEEDS_NATIVE_BF16 and not native_bf16:
                blocked = (" (blocked by hardware: no native bf16 arithmetic here; needs a CPU with AMX or "
                           "AVX512-BF16, or a GPU)")
            lines.append(f"target {method}{where}: {target.quantity} {'>=' if target.at_least else '<='} "
                         f"{target.bound}: {value:.2f} {'met' if met else 'NOT met'}{blocked}")
    return lines


def _header(device: torch.device, threads: int, data: str) -> str:
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{_cpu_name()}, {threads} thread{'s' if threads != 1 else ''} of {os.cpu_count()} CPUs"
    load = ""
    if hasattr(os, "getloadavg"):  # other work on the machine skews the figures
        load = f", load average {os.getloadavg()[0]:.2f} at start"
    return f"fastadapt speed benchmark: {machine}; torch {torch.__version__}; {data}{load}"


def _bf16_line(device: torch.device) -> str:
    what = "GPU" if device.type == "cuda" else "CPU"
    if has_native_bf16(device):
        return f"bf16: native on this {what}"
    return (f"bf16: NOT native on this {what} (no AVX512-BF16 or AMX): PyTorch runs bf16 convolutions and matrix "
            "products in reference kernels, so bf16 rows here show that hardware's cost, not bf16's promise")


def _ceilings_line(rates: dict[tuple[str, str], float], convolutions: dict[str, Convolution], threads: int,
                   device: torch.device, matmul_size: int) -> str:
    where = f"{threads} thread{'s' if threads != 1 else ''}" if device.type == "cpu" else "GPU"
    parts = []
    for precision in PRECISIONS:
        items = [f"{matmul_size}x{matmul_size} matmul {rates['matmul', precision]:.1f}"]
        items += [f"{name}'s largest convolution ({conv}) {rates[str(conv), precision]:.1f}"
                  for name, conv in convolutions.items()]
        parts.append(f"  {precision}: " + "; ".join(items))
    return f"ceilings, best GFLOP/s on {where}:\n" + "\n".join(parts)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--meta-batch-sizes", type=int, nargs="+", default=[32, 128], metavar="B",
                        help="MAML meta-batch sizes to measure (default: 32 128; on a GPU try 4 32 128)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                        help="bf16 adds ours in bf16 mixed precision: second-order MAML at the first meta-batch "
                             "size, and Prototypical Networks (default: fp32 bf16)")
    parser.add_argument("--tasks-per-pass", type=int, default=16, metavar="N",
                        help="second-order MAML at the largest meta-batch size also in the memory-saving mode, "
                             "N tasks a pass (default: 16; 0: not measured)")
    parser.add_argument("--pooling", default="stride", choices=("stride", "max"),
                        help="the MAML settings' Conv-4: stride (the MAML paper's Omniglot network, what the "
                             "MAML-family presets train) or max (max-pooling Conv-4) (default: stride)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads (default: torch's default, %(default)s here)")
    parser.add_argument("--hidden", type=int, default=64, help="Conv-4 channels (default: 64, as in the papers)")
    parser.add_argument("--matmul-size", type=int, metavar="N",
                        help=f"side of the ceiling's square matrix product (default: {MATMUL_SIZE['cpu']} on CPU, "
                             f"{MATMUL_SIZE['cuda']} on CUDA)")
    parser.add_argument("--data-root", help="use real Omniglot from this folder instead of synthetic images")
    parser.add_argument("--no-isolate", action="store_true",
                        help="measure in this process (faster to start; CPU memory figures then less reliable)")
    parser.add_argument("--layout-control", action="store_true",
                        help="also time the MAML reference loop on channels-last tensors (how much is layout alone)")
    parser.add_argument("--no-check", action="store_true", help="skip the meta-gradient check against the reference")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU")
    for name in ("repeats", "threads", "hidden"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or min(args.meta_batch_sizes) < 1 or args.tasks_per_pass < 0:
        raise ValueError("--warmup and --tasks-per-pass must be >= 0 and every meta-batch size >= 1")
    if args.matmul_size is not None and args.matmul_size < 1:
        raise ValueError(f"--matmul-size must be at least 1, got {args.matmul_size}")
    data = f"Omniglot from {args.data_root}" if args.data_root else "synthetic Omniglot-shaped images"
    print(_header(device, args.threads, data), flush=True)
    print(_bf16_line(device), flush=True)
    convolutions = {NETWORK_NAMES[pooling]: largest_convolution(pooling, args.hidden)
                    for pooling in dict.fromkeys((args.pooling, PROTONET_POOLING))}
    matmul_size = args.matmul_size or MATMUL_SIZE[device.type]
    rates = ceilings(args.device, args.threads, list(convolutions.values()), matmul_size, isolate=not args.no_isolate)
    print(_ceilings_line(rates, convolutions, args.threads, device, matmul_size), flush=True)
    specs = plan(args.meta_batch_sizes, args.layout_control, args.precisions, args.tasks_per_pass or None,
                 args.pooling, captured=device.type == "cuda", device=args.device, threads=args.threads,
                 repeats=args.repeats, warmup=args.warmup,
                 hidden=args.hidden, data_root=args.data_root)
    measurements = run(specs, isolate=not args.no_isolate, log=lambda line: print(line, flush=True))
    gradients = None
    if not args.no_check:
        torch.set_num_threads(args.threads)
        gradients = gradient_differences(hidden=args.hidden, device=args.device, dtype=torch.float64,
                                         data_root=args.data_root, pooling=args.pooling)
    print()
    print(report(measurements, "results", gradients, rates, args.hidden, has_native_bf16(device)))
    return 0
