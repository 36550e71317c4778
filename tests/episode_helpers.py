"""Helpers shared by the tests of the learners that read a support set (MANN, SNAIL, Meta Networks)."""
import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.tasks.base import TaskBatch

N_WAY, SIDE, FEATURES = 3, 6, 16


def fixed_episodes(tasks: int = 8, queries: int = 2) -> TaskBatch:
    """3-way 1-shot: noisy copies of 3 random 6x6 'characters' per task, labelled in a random order."""
    g = torch.Generator().manual_seed(0)
    characters = torch.rand(tasks, N_WAY, 1, SIDE, SIDE, generator=g)
    labels = torch.rand(tasks, N_WAY, generator=g).argsort(1)

    def draw(copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = characters.repeat_interleave(copies, 1)
        return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1), labels.repeat_interleave(copies, 1)

    return TaskBatch(*draw(1), *draw(queries))


def meta_train(model: MetaLearner, tasks: TaskBatch, lr: float, steps: int = 30, check_first=None) -> list[float]:
    """Adam steps on ``model.meta_loss(tasks)``; the losses, and ``check_first(model)`` after the first backward."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss, metrics = model.meta_loss(tasks)
        assert set(metrics) == {"loss", "accuracy"}
        optimizer.zero_grad()
        loss.backward()
        if step == 0 and check_first is not None:
            check_first(model)
        optimizer.step()
        losses.append(loss.item())
    return losses
