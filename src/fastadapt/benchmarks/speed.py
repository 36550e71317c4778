"""How fast a meta-training step runs: ours, a textbook per-task loop, and a plain-training floor.

Settings, on Omniglot-shaped data (1x28x28 images, Conv-4 with 64 channels):

* MAML, 5-way 1-shot with 15 queries a class, one inner step, second order and first order, meta-batch B;
* Prototypical Networks, one 60-way 5-shot episode with 5 queries a class (Snell et al.'s training episodes).

For each, three implementations run full steps (meta-loss, backward, Adam step) on tasks sampled beforehand:

* ours: the learner ``fastadapt train`` builds for the method (``build_learner``: Conv-4 with the norm and
  memory layout the library picks), stepped by ``Trainer.step`` as in training;
* reference: the straightforward code most public implementations use, written out below, on Conv-4 in
  PyTorch's default (NCHW) memory layout, as that code runs;
* floor: one ordinary forward+backward+Adam step of Conv-4 with an N-way head over all the images of the
  meta-batch, support and query: plain training on the same images, with no adaptation, in the faster
  channels-last layout. On a CPU the per-task implementations can beat it: one call over thousands of
  images streams its activations through main memory, where a call per task keeps them in cache.

How much of the speed-up is layout rather than batching over tasks: ``--layout-control`` adds the
reference loop run on channels-last images and weights (MAML only).

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
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms import MetaLearner
from fastadapt.datasets import ClassDataset, load_omniglot
from fastadapt.models import Conv4
from fastadapt.tasks import EpisodeTasks, TaskBatch
from fastadapt.training.allocator import reuse_freed_memory
from fastadapt.training.builders import build_learner
from fastadapt.training.config import Config
from fastadapt.training.trainer import Trainer

METHODS = ("maml", "fomaml", "protonet")
IMPLEMENTATIONS = ("ours", "reference", "floor")
#: the reference loop on channels-last tensors: the part of the speed-up that is memory layout alone
LAYOUT_CONTROL = "reference-cl"
#: (n_way, k_shot, queries per class)
EPISODES = {"maml": (5, 1, 15), "fomaml": (5, 1, 15), "protonet": (60, 5, 5)}
INNER_LR = 0.4  # Finn et al.'s Omniglot step size
META_LR = 1e-3
#: what this benchmark was written to show: (method, device, meta-batch or None for any, ratio, bound);
#: the speed-up (reference time / our time) must reach its bound, the floor ratio (our time / floor time) stay under
TARGETS = [
    ("maml", "cpu", None, "speed-up", 1.3),
    ("maml", "cpu", None, "floor", 2.0),
    ("fomaml", "cpu", None, "floor", 1.3),
    ("maml", "cuda", 32, "speed-up", 5.0),
]


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
    data_root: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class Measurement:
    spec: Spec
    seconds: list[float]
    peak_bytes: int | None

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
    return EpisodeTasks(dataset, *EPISODES[method])


def _learner(method: str, tasks: EpisodeTasks, hidden: int) -> MetaLearner:
    """What ``fastadapt train`` builds for ``method`` on these tasks."""
    return build_learner(Config(algorithm=method, tasks="omniglot", n_way=tasks.n_way, k_shot=tasks.k_shot,
                                num_query=tasks.num_query, conv_channels=hidden, inner_lr=INNER_LR,
                                inner_steps=1), tasks)


def _reference_loss(method: str, model: nn.Module, batch: TaskBatch) -> torch.Tensor:
    if method == "protonet":
        n_way, k_shot, _ = EPISODES[method]
        return reference_protonet_loss(model, batch, n_way, k_shot)
    return reference_maml_loss(model, batch, INNER_LR, 1, first_order=method == "fomaml")


def _reference_model(method: str, tasks: EpisodeTasks, hidden: int, channels_last: bool) -> nn.Module:
    """Conv-4 as the reference code builds it: a classifier for MAML (per-task batch statistics, as Finn et
    al.'s), an embedding with standard batch normalisation for Prototypical Networks (as Snell et al.'s)."""
    if method == "protonet":
        return Conv4(hidden=hidden, norm="batch", channels_last=channels_last)
    return Conv4(hidden=hidden, output_size=tasks.n_way, norm="transductive", channels_last=channels_last)


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
        norm = "batch" if spec.method == "protonet" else "transductive"
        model = Conv4(hidden=spec.hidden, output_size=tasks.n_way, norm=norm, channels_last=True).to(spec.device)
        images = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
        labels = torch.cat([batch.support_y, batch.query_y], 1).flatten()
        return _adam_steps(model, lambda: F.cross_entropy(model(images), labels))
    if spec.impl == "ours":
        learner = _learner(spec.method, tasks, spec.hidden).to(spec.device)
        cfg = Config(algorithm=spec.method, meta_lr=META_LR, meta_batch_size=spec.meta_batch, device=spec.device)
        trainer = Trainer(cfg, learner, tasks, device=spec.device, progress=False)
        return lambda: trainer.step(batch)
    # The layout control's Conv-4 turns its weights and every input channels-last itself.
    model = _reference_model(spec.method, tasks, spec.hidden, channels_last=spec.impl == LAYOUT_CONTROL)
    model = model.to(spec.device)
    return _adam_steps(model, lambda: _reference_loss(spec.method, model, batch))


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
    """Time ``spec.repeats`` steps after ``spec.warmup`` untimed ones (the first vmapped call is slower).

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
    return Measurement(spec, seconds, peak.bytes)


def gradient_differences(meta_batch: int = 4, hidden: int = 64, device: str = "cpu",
                         dtype: torch.dtype = torch.float32, data_root: str | None = None,
                         seed: int = 0) -> dict[str, tuple[float, float]]:
    """max |ours - reference| and max |reference| over the meta-gradient of each method, from the same weights."""
    differences = {}
    for method in METHODS:
        tasks = _tasks(method, data_root, seed)
        batch = tasks.sample(1 if method == "protonet" else meta_batch, torch.Generator().manual_seed(seed))
        batch = TaskBatch(batch.support_x.to(device, dtype), batch.support_y.to(device),
                          batch.query_x.to(device, dtype), batch.query_y.to(device))
        learner = _learner(method, tasks, hidden).to(device, dtype)
        params = [p for p in learner.parameters() if p.requires_grad]
        ours = torch.autograd.grad(learner.meta_loss(batch)[0], params)
        model = learner.encoder if method == "protonet" else learner.model
        reference = torch.autograd.grad(_reference_loss(method, model, batch), params)
        differences[method] = (max((a - b).abs().max().item() for a, b in zip(ours, reference)),
                               max(b.abs().max().item() for b in reference))
    return differences


# --- running and reporting ---
def plan(meta_batch_sizes: Sequence[int], layout_control: bool = False, **common: object) -> list[Spec]:
    """The measurements of one benchmark run: per meta-batch size MAML and FOMAML (ours, reference, and with
    ``layout_control`` the reference on channels-last tensors) and one floor (the same images serve both),
    then one Prototypical Networks episode (ours, reference, floor)."""
    references = ("reference", LAYOUT_CONTROL) if layout_control else ("reference",)
    specs = []
    for size in meta_batch_sizes:
        specs += [Spec(method, impl, size, **common) for method in ("maml", "fomaml") for impl in ("ours", *references)]
        specs.append(Spec("maml", "floor", size, **common))
    specs += [Spec("protonet", impl, 1, **common) for impl in IMPLEMENTATIONS]
    return specs


def run(specs: Sequence[Spec], isolate: bool = True, log: Callable[[str], None] | None = None) -> list[Measurement]:
    """Measure every spec, each in a fresh spawned process unless ``isolate`` is false."""
    if isolate:
        with get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            return _collect(pool.imap(measure, specs, chunksize=1), log)
    return _collect(map(measure, specs), log)


def _collect(measurements: Iterable[Measurement], log: Callable[[str], None] | None) -> list[Measurement]:
    collected = []
    for m in measurements:
        collected.append(m)
        if log:
            log(f"  measured {m.spec.method} {m.spec.impl} meta-batch {m.spec.meta_batch}: "
                f"{m.step * 1e3:.0f} ms/step")
    return collected


LABELS = {
    ("maml", "ours"): "ours, 2nd order",
    ("maml", "reference"): "reference loop over tasks, 2nd order",
    ("fomaml", "ours"): "ours, 1st order",
    ("fomaml", "reference"): "reference loop over tasks, 1st order",
    ("maml", LAYOUT_CONTROL): "  the same on channels-last tensors",
    ("fomaml", LAYOUT_CONTROL): "  the same on channels-last tensors",
    ("maml", "floor"): "floor: plain training step on the same images",
    ("protonet", "ours"): "ours",
    ("protonet", "reference"): "reference (as Snell et al.'s code)",
    ("protonet", "floor"): "floor: plain training step on the same images",
}


def _settings(measurements: Sequence[Measurement]) -> Iterator[tuple[str, list[tuple[str, str, int]], dict]]:
    """(title, rows, comparisons) of every measured setting; a comparison is (ours, reference, floor) keys."""
    for size in sorted({m.spec.meta_batch for m in measurements if m.spec.method != "protonet"}):
        n_way, k_shot, queries = EPISODES["maml"]
        title = (f"MAML {n_way}-way {k_shot}-shot, {queries} queries a class, 1 inner step, meta-batch {size} "
                 f"({size * n_way * (k_shot + queries)} images)")
        rows = [(method, impl, size) for method in ("maml", "fomaml") for impl in ("ours", "reference", LAYOUT_CONTROL)]
        floor = ("maml", "floor", size)
        comparisons = {method: ((method, "ours", size), (method, "reference", size), floor)
                       for method in ("maml", "fomaml")}
        yield title, rows + [floor], comparisons
    if any(m.spec.method == "protonet" for m in measurements):
        n_way, k_shot, queries = EPISODES["protonet"]
        title = (f"Prototypical Networks, one {n_way}-way {k_shot}-shot episode, {queries} queries a class "
                 f"({n_way * (k_shot + queries)} images)")
        rows = [("protonet", impl, 1) for impl in IMPLEMENTATIONS]
        yield title, rows, {"protonet": tuple(rows)}


def report(measurements: Sequence[Measurement], header: str,
           gradients: dict[str, tuple[float, float]] | None = None) -> str:
    """Per setting: time per step, steps per second and peak memory of each implementation, then the
    speed-up (reference time / our time) and the floor ratio (our time / floor time); then the targets."""
    found = {(m.spec.method, m.spec.impl, m.spec.meta_batch): m for m in measurements}
    lines = [header, "", f"{'':52s} {'ms/step':>9s} {'steps/s':>8s} {'peak MB':>8s}"]
    ratios = {}
    for title, rows, comparisons in _settings(measurements):
        lines.append(title)
        for key in rows:
            if key in found:
                m = found[key]
                peak = "-" if m.peak_bytes is None else f"{m.peak_bytes / 2**20:.0f}"
                lines.append(f"  {LABELS[key[:2]]:50s} {m.step * 1e3:9.1f} {1 / m.step:8.2f} {peak:>8s}")
        for method, keys in comparisons.items():
            if all(key in found for key in keys):
                ours, reference, floor = (found[key].step for key in keys)
                ratios[(method, keys[0][2])] = ratio = {"speed-up": reference / ours, "floor": ours / floor}
                control = found.get((method, LAYOUT_CONTROL, keys[0][2]))
                layout = f"; {control.step / ours:.2f}x over the channels-last reference" if control else ""
                lines.append(f"  -> {LABELS[(method, 'ours')]}: speed-up {ratio['speed-up']:.2f}x, "
                             f"floor {ratio['floor']:.2f}x{layout}")
        lines.append("")
    lines.append("speed-up = reference time / our time; floor = our time / floor time")
    if gradients:
        lines.append("meta-gradient check in float64, ours against the reference from the same weights: " + "; ".join(
            f"{method} max |diff| {diff:.1e} (max |grad| {scale:.1e})" for method, (diff, scale) in gradients.items()))
    device = measurements[0].spec.device.split(":")[0] if measurements else "cpu"
    for method, target_device, size, name, bound in TARGETS:
        for (measured, measured_size), ratio in sorted(ratios.items()):
            if (measured, target_device) == (method, device) and size in (None, measured_size):
                at_least = name == "speed-up"
                met = ratio[name] >= bound if at_least else ratio[name] <= bound
                lines.append(f"target {method} meta-batch {measured_size}: {name} {'>=' if at_least else '<='} "
                             f"{bound}: {ratio[name]:.2f} {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def _header(device: torch.device, threads: int, data: str) -> str:
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{_cpu_name()}, {threads} thread{'s' if threads != 1 else ''} of {os.cpu_count()} CPUs"
    load = ""
    if hasattr(os, "getloadavg"):  # other work on the machine skews the figures
        load = f", load average {os.getloadavg()[0]:.2f} at start"
    return f"fastadapt speed benchmark: {machine}; torch {torch.__version__}; {data}{load}"


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
    parser.add_argument("--meta-batch-sizes", type=int, nargs="+", default=[32], metavar="B",
                        help="MAML meta-batch sizes to measure (default: 32; on a GPU try 4 32 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads (default: torch's default, %(default)s here)")
    parser.add_argument("--hidden", type=int, default=64, help="Conv-4 channels (default: 64, as in the papers)")
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
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or min(args.meta_batch_sizes) < 1:
        raise ValueError("--warmup must be >= 0 and every meta-batch size >= 1")
    data = f"Omniglot from {args.data_root}" if args.data_root else "synthetic Omniglot-shaped images"
    print(_header(device, args.threads, data), flush=True)
    specs = plan(args.meta_batch_sizes, args.layout_control, device=args.device, threads=args.threads, repeats=args.repeats,
                 warmup=args.warmup, hidden=args.hidden, data_root=args.data_root)
    measurements = run(specs, isolate=not args.no_isolate, log=lambda line: print(line, flush=True))
    gradients = None
    if not args.no_check:
        torch.set_num_threads(args.threads)
        gradients = gradient_differences(hidden=args.hidden, device=args.device, dtype=torch.float64,
                                         data_root=args.data_root)
    print()
    print(report(measurements, "results", gradients))
    return 0

