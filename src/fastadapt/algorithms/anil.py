"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio and Vinyals, 2020, "Rapid Learning or Feature Reuse?").

MAML's inner loop with only the network's head adapted per task; the body (every layer before the head) is
shared by all tasks and meta-learned by the outer loop alone. For each task T_i, with the body f_theta and
the head's weights w:

    w_i = w - alpha * grad_w L_support(T_i; f_theta, w)      (repeated)

and the meta-loss is the mean query loss sum_i L_query(T_i; f_theta, w_i), differentiated with respect to
theta and w through the inner loop (second order; ``first_order=True`` treats the inner gradients as
constants). The paper found that MAML's rapid learning is mostly feature reuse, so that this keeps its
accuracy while the inner loop touches one linear layer.

Built on MAML: the head is MAML's ``model`` and the inner loop is MAML's, run on the body's features of the
support set. Each task's images pass through the body once per adaptation (support) and once per
prediction (query), vmapped over tasks so that per-task batch statistics (norm "transductive") stay per task;
the inner steps then run on features only.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.maml import GRADIENT_OPTIONS, MAML, Params, gradient_options
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.tasks.base import TaskBatch


class ANIL(MAML):
    def __init__(self, body: nn.Module, features: int, outputs: int, loss: str, **maml_options) -> None:
        """``body``: the network without its head, (batch, *input) -> (batch, ``features``); the head is a new
        linear layer to ``outputs``. ``maml_options``: MAML's inner-loop settings."""
        super().__init__(nn.Linear(features, outputs), loss, **maml_options)
        self.body = body

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(tasks, examples, *input) -> (tasks, examples, features), each task's examples in their own pass."""
        return vmap(lambda images: self.body(images).flatten(1), randomness="different")(x)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """The adapted head of every task, each weight with a leading task dimension."""
        return super().adapt(self.embed(support_x), support_y, steps)

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        return vmap(self._forward, randomness="different")(adapted, self.embed(query_x))

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss after adaptation; the head's per-task query activations are small, so MAML's
        early per-task differentiation of the query pass is not needed."""
        return MetaLearner.meta_loss(self, tasks)


def _build(context) -> ANIL:
    return ANIL(*context.encoder(), context.tasks.output_size, context.tasks.loss,
                **gradient_options(context.cfg.method))


SPECS = (MethodSpec("anil", ANIL, _build, GRADIENT_OPTIONS, gradient_based=True, images_only=True),)
