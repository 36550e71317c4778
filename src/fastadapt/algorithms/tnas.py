"""T-NAS-style task-specific architectures (Lian et al. 2020, "Towards Fast Adaptation of Neural
Architectures with Meta Learning").

MAML on a DARTS supernet in which the architecture weights alpha are adapted in the inner loop along
with the weights: each task's support set moves alpha (with its own, usually much larger, step size
``alpha_inner_lr``; the paper's code uses 30 against 0.01 for weights), so every new task gets its
own architecture in a few gradient steps, and the meta-learner learns the architecture
*initialisation* from which those steps start. The meta-gradient flows through the inner loop to
alpha (second order unless ``first_order``).

Each task's architecture is ``task_architectures(adapt(...))``; ``architecture()`` is the
meta-architecture. Predictions use the adapted supernet (weights and alpha both task-specific, as in
T-NAS++); the paper's T-NAS instead decodes each test task's architecture and trains it from
scratch with MAML, which costs a full meta-training per test task.
"""
from __future__ import annotations

from torch import nn

from fastadapt.algorithms.architecture import ArchitectureLearning, ArchitectureOptions, architecture_options
from fastadapt.algorithms.maml import GRADIENT_OPTIONS, MAML, gradient_options
from fastadapt.algorithms.spec import MethodSpec


class TNAS(ArchitectureLearning, MAML):
    def __init__(self, model: nn.Module, loss: str, inner_lr: float = 0.4, alpha_inner_lr: float = 30.0,
                 **options) -> None:
        super().__init__(model, loss, inner_lr=inner_lr, alpha_inner_lr=alpha_inner_lr, **options)


def _build(context) -> TNAS:
    method = context.cfg.method
    return TNAS(context.model(), context.tasks.loss, **gradient_options(method), **architecture_options(method))


SPECS = (MethodSpec("tnas", TNAS, _build, (*GRADIENT_OPTIONS, ArchitectureOptions), gradient_based=True,
                    searches_architecture=True),)
