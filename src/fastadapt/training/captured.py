"""The whole meta-step in one CUDA graph: gather the episodes' images, inner loop, query loss, meta-gradient,
optimizer step, replayed as one launch per meta-iteration.

Why: small convolutions on 28x28 images leave a GPU launch-bound. MAML's eager step at meta-batch 32 took
about 26-30 ms on an H200, almost all of it kernel launches and Python, not arithmetic (docs/benchmarks.md,
GPU). A graph replays the recorded kernels with neither.

How it stays the same run as the eager step:

* The tasks are drawn on the CPU from the trainer's generator, exactly as the eager step draws them, so the
  same seed gives the same tasks with or without a graph; only their dataset indices (tasks x ways x images,
  int64) travel, through a pinned host buffer, into a fixed device buffer. The images stay on the GPU as
  uint8 (Omniglot's training classes are 17 MB) and are gathered inside the graph.
* The loss and accuracy add up on the GPU inside the graph, with a flag set by any non-finite loss; the
  trainer reads them back only when it logs or checkpoints, so no iteration waits for the GPU. A diverged
  run is therefore caught at the next log line or checkpoint (the eager step checks every step), and its
  last good checkpoint is kept.
* Adam runs with ``capturable=True`` (its step count on the GPU, so the graph advances it).
* Capture needs a few eager warm-up steps on a side stream (cuDNN and cuBLAS pick algorithms and allocate
  workspaces outside the graph); they train, so the learner's and the optimizer's state are put back after
  them, in place.

On the CPU, or when capture fails (one line says so), the same static path runs eagerly: that path is what
the tests compare with the eager trainer step, bit for bit.
"""
from __future__ import annotations

from typing import Callable

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.config.schema import CUDA_GRAPH_SETTINGS
from fastadapt.tasks.base import IndexedTasks
from fastadapt.training.precision import autocast

#: Eager steps on a side stream before capture (PyTorch's documentation uses a few; one can leave lazy
#: initialisation, such as cuBLAS workspaces, inside the capture).
WARMUP_STEPS = 3


class CapturedStep:
    """One meta-step on ``num_tasks`` tasks of ``tasks``, captured in a CUDA graph on first use when ``capture``."""

    def __init__(self, learner: MetaLearner, optimizer: torch.optim.Optimizer, tasks: IndexedTasks, num_tasks: int,
                 precision: str, device: torch.device | str, capture: bool = True,
                 say: Callable[[str], None] = print) -> None:
        self.learner, self.optimizer, self.tasks, self.precision = learner, optimizer, tasks, precision
        self.device = torch.device(device)
        self.capture = capture and self.device.type == "cuda"
        self.say = say
        self.images = tasks.dataset.images.to(self.device)
        shape = (num_tasks, tasks.n_way, tasks.k_shot + tasks.num_query)
        self.indices = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.keys = ("loss", "accuracy") if learner.loss == "cross_entropy" else ("loss",)
        self.sums = torch.zeros(len(self.keys) + 1, device=self.device)  # the metrics, then non-finite losses
        # two pinned buffers, so that the CPU fills one while the other may still be copying
        self.pinned = [torch.empty(shape, dtype=torch.long, pin_memory=self.capture) for _ in range(2)]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def step(self, indices: torch.Tensor) -> None:
        """One meta-step on the tasks of ``indices`` (``IndexedTasks.sample_indices``); returns at once on a GPU."""
        self._load(indices)
        if self.capture and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._body()
        self.steps += 1

    def take_sums(self) -> tuple[dict[str, float], bool]:
        """The metrics summed over the steps since the last call, and whether any loss so far was non-finite."""
        values = self.sums.tolist()  # the one read-back (a synchronisation) between log lines
        self.sums[: len(self.keys)].zero_()
        return dict(zip(self.keys, values)), values[-1] > 0

    def has_diverged(self) -> bool:
        return self.sums[-1].item() > 0

    def _load(self, indices: torch.Tensor) -> None:
        if not self.capture:
            self.indices.copy_(indices)
            return
        slot = self.steps % 2
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # its previous copy to the GPU is done: the buffer may be refilled
        self.pinned[slot].copy_(indices)
        self.indices.copy_(self.pinned[slot], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.copied[slot] = event

    def _body(self) -> None:
        """What the graph records: gather, meta-loss, backward, optimizer step, metric sums (gradients None before)."""
        batch = self.tasks.materialize(self.indices, images=self.images)
        self.learner.metrics_as_tensors = True
        try:
            with autocast(self.precision, self.device, cache=False):  # autocast's cast cache cannot be captured
                loss, metrics = self.learner.meta_loss(batch)
        finally:
            self.learner.metrics_as_tensors = False
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.sums += torch.stack([*(metrics[key].float() for key in self.keys),
                                      (~torch.isfinite(loss.detach())).float()])

    def _capture(self) -> None:
        for group in self.optimizer.param_groups:
            if "capturable" in group:  # Adam: the step count lives on the GPU, so a replay advances it
                group["capturable"] = True
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(self.device, torch.float32)
        saved = self._snapshot()
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._restore(saved)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            self.graph = graph
        except RuntimeError as error:  # an operation that cannot be captured: the same step, eagerly
            torch.cuda.synchronize(self.device)
            self._restore(saved)
            self.capture = False
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            self.say(f"CUDA graph capture failed ({first_line[:200]}); training with the eager step")

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
        learner = {name: value.detach().clone() for name, value in self.learner.state_dict().items()}
        optimizer = {id(p): {key: value.clone() for key, value in state.items() if torch.is_tensor(value)}
                     for p, state in self.optimizer.state.items()}
        return learner, optimizer

    def _restore(self, saved: tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]) -> None:
        """Put back the state of ``_snapshot``, in place (the graph keeps the tensors it recorded). Optimizer
        state the warm-up created is zeroed: Adam's moments and step count start at zero."""
        learner, optimizer = saved
        self.learner.load_state_dict(learner)
        with torch.no_grad():
            for p, state in self.optimizer.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value):
                        before = optimizer.get(id(p), {}).get(key)
                        if before is None:
                            value.zero_()
                        else:
                            value.copy_(before)
            self.sums.zero_()
        self.optimizer.zero_grad(set_to_none=True)


def captured_step(setting: str, learner: MetaLearner, tasks, optimizer: torch.optim.Optimizer | None,
                  num_tasks: int, precision: str, device: torch.device, obstacle: str | None,
                  say: Callable[[str], None]) -> CapturedStep | None:
    """The captured step for a run, or None for the eager one. ``setting``: "auto" (a graph where it applies),
    "on" (the same, saying why not where it does not) or "off". ``obstacle``: what in the trainer rules a graph
    out (a learning-rate schedule, a gradient hook, chunks of tasks), or None. On a GPU, a run that cannot use
    a graph says so in one line."""
    if setting not in CUDA_GRAPH_SETTINGS:
        raise ValueError(f"unknown cuda_graph {setting!r}; choose one of {CUDA_GRAPH_SETTINGS}")
    if setting == "off":
        return None
    reason = obstacle
    if device.type != "cuda":
        reason = f"the device is {device.type}, not a CUDA GPU"
    elif not getattr(learner, "captures_whole_step", False):
        reason = f"{type(learner).__name__}'s step is not known to be capturable"
    elif not isinstance(tasks, IndexedTasks):
        reason = "the tasks are not drawn as indices into one tensor of images (tasks.base.IndexedTasks)"
    elif optimizer is None:
        reason = "there is no outer optimizer"
    if reason is not None:
        if setting == "on" or device.type == "cuda":
            say(f"CUDA graph: not used ({reason}); training with the eager step")
        return None
    return CapturedStep(learner, optimizer, tasks, num_tasks, precision, device, capture=True, say=say)
