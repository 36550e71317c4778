"""What the learners that meta-learn an architecture with its weights share (MetaNAS, T-NAS).

The network is a DARTS supernet (``models.darts.SearchNetwork``); its architecture weights alpha are
ordinary parameters, so MAML's vmapped inner loop adapts them with the weights, each at its own step
size: ``inner_lr`` for weights, ``alpha_inner_lr`` for alpha. On top of MAML this adds

* a **warm-up**: for the first ``warmup_iterations`` meta-iterations alpha is frozen (no inner steps,
  no meta-gradient), so the weights of all operations learn something before the architecture is
  judged by them (Elsken et al. 2020);
* a **temperature** of the softmax over operations, annealed linearly over the inner steps of every
  task from ``temperature_start`` to ``temperature_end`` (MetaNAS: 1 to 0.05 on Omniglot), so that the
  adapted architecture weights end close to one-hot and the adapted supernet is nearly the discrete
  network of its task. The query predictions use the last step's temperature. During warm-up the
  temperature stays at ``temperature_start``.

The meta-iteration counter is a buffer, so a checkpoint carries it and a resumed run continues the
schedule exactly. ``architecture_parameters()`` lets the outer optimizer give alpha its own learning rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms.maml import Params
from fastadapt.models.darts import ALPHA_PREFIX, Genotype, SearchNetwork, architecture_weights, discretise
from fastadapt.options import NON_NEGATIVE, OptionError, Options, read_options, setting
from fastadapt.tasks.base import TaskBatch

#: The entry of an adapted-parameters dict that holds the temperature its task's predictions use.
TEMPERATURE = "temperature"


@dataclass(frozen=True)
class ArchitectureOptions(Options):
    """The architecture search's options (MetaNAS, T-NAS)."""

    alpha_inner_lr: float = setting(0.1, "metanas / tnas: inner-loop step size of the architecture weights alpha",
                                    rule=NON_NEGATIVE)
    warmup_iterations: int = setting(0, "metanas / tnas: meta-iterations with alpha frozen before the search",
                                     rule=NON_NEGATIVE)
    temperature_start: float = setting(1.0, "metanas / tnas: softmax temperature over operations at the first "
                                            "inner step")
    temperature_end: float = setting(1.0, "metanas / tnas: temperature at the last inner step and for "
                                          "predictions (annealed linearly over the inner steps)")

    def check(self) -> None:
        if not isinstance(self.warmup_iterations, int):
            raise OptionError(f"warmup_iterations must be a non-negative integer, got {self.warmup_iterations!r}")
        if not (self.temperature_start > 0 and self.temperature_end > 0):
            raise OptionError(f"softmax temperatures must be positive, got start {self.temperature_start}, "
                              f"end {self.temperature_end}")


class ArchitectureLearning:
    """Mixin placed before a MAML subclass: ``class MetaNAS(ArchitectureLearning, Reptile)``."""

    captures_whole_step = False  # the warm-up depends on the iteration, which a graph would freeze

    def __init__(self, model: nn.Module, loss: str, *, alpha_inner_lr: float = 0.0, warmup_iterations: int = 0,
                 temperature_start: float = 1.0, temperature_end: float = 1.0, **maml_options) -> None:
        if not isinstance(model, SearchNetwork):
            raise TypeError(f"{type(self).__name__} searches an architecture: its model must be a "
                            f"models.darts.SearchNetwork, got {type(model).__name__}")
        super().__init__(model, loss, **maml_options)
        ArchitectureOptions(alpha_inner_lr, warmup_iterations, temperature_start, temperature_end)
        self.alpha_inner_lr = float(alpha_inner_lr)
        self.warmup_iterations = warmup_iterations
        self.temperature_start, self.temperature_end = float(temperature_start), float(temperature_end)
        self.register_buffer("meta_iteration", torch.tensor(0))
        self._inner_step_index = 0
        self._inner_step_count = 0

    # --- the schedule ---
    @property
    def warming_up(self) -> bool:
        return int(self.meta_iteration) < self.warmup_iterations

    def temperature(self, step: int, steps: int) -> float:
        """The softmax temperature at inner step ``step`` of ``steps`` (step == steps: the prediction's)."""
        if self.warming_up or steps <= 1:
            return self.temperature_start
        fraction = min(step, steps - 1) / (steps - 1)
        return self.temperature_start + fraction * (self.temperature_end - self.temperature_start)

    # --- parameter groups ---
    def architecture_parameters(self) -> list[nn.Parameter]:
        """The alphas; the outer optimizer may give them their own learning rate (``alpha_meta_lr``)."""
        return [p for name, p in self.model.named_parameters() if name.startswith(ALPHA_PREFIX)]

    # --- hooks into MAML's inner loop ---
    def inner_learning_rates(self) -> Params:
        alpha_rate = 0.0 if self.warming_up else self.alpha_inner_lr
        return {name: alpha_rate if name.startswith(ALPHA_PREFIX) else self.inner_lr
                for name, _ in self.model.named_parameters()}

    def _forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The supernet at the temperature of ``params`` (adapted ones carry it), else of the current inner step."""
        params = dict(params)
        temperature = params.pop(TEMPERATURE, None)
        if temperature is None:
            temperature = torch.tensor(self.temperature(self._inner_step_index, self._inner_step_count), dtype=x.dtype)
        buffers = {**dict(self.model.named_buffers()), TEMPERATURE: temperature}
        return functional_call(self.model, (params, buffers), (x,))

    def _inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, first_order: bool) -> Params:
        # MAML.adapt runs the per-task step function once per step (vmap batches it), so counting calls here
        # gives the step index for the temperature that _forward reads.
        updated = super()._inner_step(params, x, y, first_order)
        self._inner_step_index += 1
        return updated

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """MAML's adaptation of weights and alpha; the result also holds the temperature to predict with."""
        if steps is None:
            steps = self.inner_steps if self.training else self.eval_inner_steps
        self._inner_step_index, self._inner_step_count = 0, steps
        adapted = super().adapt(support_x, support_y, steps)
        final = self.temperature(steps, steps)
        adapted[TEMPERATURE] = torch.full((support_x.shape[0],), final, dtype=support_x.dtype,
                                          device=support_x.device)
        return adapted

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        if TEMPERATURE not in adapted:
            raise ValueError(f"{type(self).__name__}.predict needs the output of its own adapt (with its temperature)")
        return super().predict(adapted, query_x)

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's meta-loss; during warm-up alpha gets no meta-gradient. Counts the meta-iteration."""
        warming_up = self.warming_up
        alphas = self.architecture_parameters()
        for alpha in alphas:
            alpha.requires_grad_(not warming_up)
        try:
            loss, metrics = self.outer_loss(tasks)
        finally:
            for alpha in alphas:
                alpha.requires_grad_(True)
        self.meta_iteration += 1
        metrics["warm-up"] = float(warming_up)
        return loss, metrics

    def outer_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The meta-loss of the MAML subclass this mixin is placed on."""
        return super().meta_loss(tasks)

    # --- architectures ---
    def architecture(self) -> Genotype:
        """The meta-architecture: the discrete network of the meta-learned alpha, at the temperature the tasks'
        predictions use."""
        temperature = self.temperature(self.eval_inner_steps, self.eval_inner_steps)
        return discretise(architecture_weights(self.model.alphas, temperature), self.model.space)

    def task_architectures(self, adapted: Params) -> list[Genotype]:
        """The discrete architecture of every task's adapted alpha (``adapted`` from ``adapt``)."""
        names = [name for name in adapted if name.startswith(ALPHA_PREFIX)]
        genotypes = []
        for task, temperature in enumerate(adapted[TEMPERATURE]):
            alphas = {name[len(ALPHA_PREFIX):]: adapted[name][task] for name in names}
            genotypes.append(discretise(architecture_weights(alphas, temperature), self.model.space))
        return genotypes


def architecture_options(method) -> dict:
    """The architecture-search options of a run's method settings, as ``ArchitectureLearning`` takes them."""
    return read_options((ArchitectureOptions,), method)
