"""MetaNAS (Elsken, Staffler, Metzen and Hutter, 2020): meta-learning an architecture with its weights.

The network is a DARTS supernet. Each task's learner adapts the weights *and* the architecture weights
alpha on its support set (a few gradient steps, as DARTS's first-order task optimizer would), and the
meta-learner moves the initialisation of both towards the adapted values, Reptile-style:

    (w, alpha) <- (w, alpha) + epsilon * mean_i ((w_i, alpha_i) - (w, alpha))

or, with ``outer="fomaml"``, by the first-order MAML gradient of the query loss after adaptation. For
the first ``warmup_iterations`` alpha is frozen, and the softmax temperature is annealed over each
task's inner steps (1 to 0.05 on Omniglot), so an adapted supernet is nearly a discrete network and
needs no retraining: see ``algorithms.architecture``.

Deviations from the paper's code: the inner loop is plain SGD on the whole support set (the paper:
Adam with beta1 = 0 on mini-batches, as in Reptile's code); no drop-path; nodes keep their two
strongest inputs by DARTS's rule instead of MetaNAS's pairwise input weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastadapt.algorithms.architecture import ArchitectureLearning, ArchitectureOptions, architecture_options
from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.maml import GRADIENT_OPTIONS, gradient_options
from fastadapt.algorithms.reptile import Reptile
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.options import Options, one_of, setting
from fastadapt.tasks.base import TaskBatch

OUTER_UPDATES = ("reptile", "fomaml")


@dataclass(frozen=True)
class OuterUpdateOptions(Options):
    """MetaNAS's outer step."""

    outer_update: str = setting("reptile", "metanas: reptile (move towards the adapted weights and alphas) or "
                                           "fomaml (first-order MAML gradient)", rule=one_of(*OUTER_UPDATES))


class MetaNAS(ArchitectureLearning, Reptile):
    def __init__(self, model: nn.Module, loss: str, inner_lr: float = 0.1, inner_steps: int = 5,
                 outer: str = "reptile", alpha_inner_lr: float = 0.1, warmup_iterations: int = 0,
                 temperature_start: float = 1.0, temperature_end: float = 0.05, **options) -> None:
        if outer not in OUTER_UPDATES:
            raise ValueError(f"MetaNAS outer update must be one of {OUTER_UPDATES}, got {outer!r}")
        super().__init__(model, loss, inner_lr=inner_lr, inner_steps=inner_steps, alpha_inner_lr=alpha_inner_lr,
                         warmup_iterations=warmup_iterations, temperature_start=temperature_start,
                         temperature_end=temperature_end, **options)
        self.outer = outer

    def outer_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.outer == "reptile":
            return Reptile.meta_loss(self, tasks)
        # First-order MAML: the query loss after Reptile's first-order inner loop.
        return MetaLearner.meta_loss(self, tasks)


def _build(context) -> MetaNAS:
    method = context.cfg.method
    return MetaNAS(context.model(), context.tasks.loss, outer=method.outer_update, **gradient_options(method),
                   **architecture_options(method))


SPECS = (MethodSpec("metanas", MetaNAS, _build, (*GRADIENT_OPTIONS, ArchitectureOptions, OuterUpdateOptions),
                    gradient_based=True, searches_architecture=True),)
