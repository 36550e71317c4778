"""Embedding + logistic regression (Tian, Wang, Krishnan, Tenenbaum and Isola, 2020, "Rethinking
Few-Shot Image Classification: a Good Embedding Is All You Need").

Training is Baseline's: one classifier over all training classes, trained on mini-batches. For a
new task the features are scaled to unit length and a multinomial logistic regression with an L2
penalty on its weights (not its intercept) is fitted to the support set,

    min_{W, b}  sum_i CE(W z_i + b, y_i) + 1/(2C) ||W||^2,      z_i = f(x_i) / ||f(x_i)||,

scikit-learn's objective with its default C = 1, which is what Tian et al. call. The problem is
strongly convex in W, so it is solved to its optimum rather than stepped: Nesterov's accelerated
gradient with step 1/L, where L = (support size) + 1/C bounds the curvature for unit-length features,
for a fixed number of steps (the optimum then agrees with scikit-learn's to ~1e-4, tested). A task's
solution depends on its own support set only, so batches of tasks are solved together.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.base import embed_images
from fastadapt.algorithms.baseline import Baseline, FittedHead
from fastadapt.algorithms.protonet import support_one_hot
from fastadapt.algorithms.spec import MethodSpec


class EmbeddingLogisticRegression(Baseline):
    def __init__(self, encoder: nn.Module, feature_size: int, num_classes: int, c: float = 1.0,
                 solver_steps: int = 500) -> None:
        super().__init__(encoder, feature_size, num_classes)
        if not c > 0 or solver_steps < 1:
            raise ValueError(f"logistic regression needs C > 0 and solver_steps >= 1, got {c}, {solver_steps}")
        self.c, self.solver_steps = c, solver_steps

    def logits(self, weight: torch.Tensor, bias: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        return super().logits(weight, bias, F.normalize(features, dim=-1))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> FittedHead:
        one_hot = support_one_hot(support_x, support_y, type(self).__name__)
        with torch.no_grad():
            features = embed_images(self.encoder, support_x, type(self).__name__)
        steps = self.solver_steps if steps is None else steps
        return FittedHead(*self.solve(F.normalize(features, dim=-1), one_hot, steps))

    def solve(self, z: torch.Tensor, one_hot: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The penalised maximum-likelihood weights (tasks, N, D) and intercepts (tasks, N) for unit-length
        features z (tasks, S, D); the gradient is written out, so no autograd graph is kept."""
        tasks, support, width = z.shape
        n_way = one_hot.shape[-1]
        weight, bias = z.new_zeros(tasks, n_way, width), z.new_zeros(tasks, n_way)
        previous = (weight, bias)
        step = 1.0 / (support + 1.0 / self.c)
        for k in range(steps):
            momentum = k / (k + 3)
            w = weight + momentum * (weight - previous[0])
            b = bias + momentum * (bias - previous[1])
            residual = torch.softmax(z @ w.transpose(1, 2) + b.unsqueeze(1), dim=-1) - one_hot  # (tasks, S, N)
            previous = (weight, bias)
            weight = w - step * (residual.transpose(1, 2) @ z + w / self.c)
            bias = b - step * residual.sum(1)
        return weight, bias


def _build(context) -> EmbeddingLogisticRegression:
    if context.cfg.method.finetune != "head":
        raise ValueError("logreg fits a logistic regression on frozen features: finetune 'all' is for "
                         "baseline and baseline++")
    return EmbeddingLogisticRegression(*context.encoder(), context.tasks.output_size)


SPECS = (MethodSpec("logreg", EmbeddingLogisticRegression, _build, any_way=True, minibatch_trained=True,
                    images_only=True),)
