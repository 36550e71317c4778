"""The "pretrained" baseline of the MAML paper: no meta-learning at all.

One network is trained on the pooled data of all tasks (support and query
points alike, no adaptation inside the loss); at test time it is fine-tuned on
each new task's support set with the same gradient steps MAML would take. It
shows what MAML's learned initialisation adds over ordinary joint training.
"""
from __future__ import annotations

import torch

from fastadapt.algorithms.maml import GRADIENT_OPTIONS, MAML, build_gradient_based
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.tasks.base import TaskBatch


class Pretrained(MAML):
    captures_whole_step = False  # its own meta_loss, not checked under capture
    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        x = torch.cat([tasks.support_x, tasks.query_x], dim=1)
        y = torch.cat([tasks.support_y, tasks.query_y], dim=1)
        outputs = self.model(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        loss = self.task_losses(outputs, y).mean()
        return loss, self.metrics(outputs, y, loss)


SPECS = (MethodSpec("pretrained", Pretrained, build_gradient_based(Pretrained), GRADIENT_OPTIONS, gradient_based=True),)
