"""Helpers shared by tests: episodes for the learners that read a support set (MANN, SNAIL, Meta Networks), and
folders of glyph images for the runs that read image files; datasets whose images say their own index."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastadapt.algorithms.base import MetaLearner
from fastadapt.datasets import ClassDataset
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


def write_glyph_folder(root: Path, classes: int, images: int, side: int = 28, ink_above: float = 0.7,
                       flip_above: float = 0.95, name: str = "class{:02d}") -> Path:
    """root/<class>/<png>: each class a random side x side glyph (pixels whose uniform draw is above ``ink_above``),
    its images copies of it with the pixels whose draw is above ``flip_above`` flipped; seeded, so the same
    arguments write the same files."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        glyph = rng.random((side, side)) > ink_above
        (root / name.format(c)).mkdir(parents=True)
        for i in range(images):
            noisy = glyph ^ (rng.random((side, side)) > flip_above)
            Image.fromarray((noisy * 255).astype(np.uint8)).save(root / name.format(c) / f"{i}.png")
    return root


def traceable_dataset(classes: int = 12, per_class: int = 10, uneven: bool = False) -> ClassDataset:
    """Image i holds the value i in its pixel (0, 0, 0) (as two base-256 digits in pixels 0 and 1), so
    every drawn image can be traced to its dataset index; with ``uneven`` class c has per_class + c images."""
    counts = [per_class + (c if uneven else 0) for c in range(classes)]
    n = sum(counts)
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    labels = torch.repeat_interleave(torch.arange(classes), torch.tensor(counts))
    return ClassDataset(images, labels, [f"class{c}" for c in range(classes)])


def indices_of(x: torch.Tensor) -> torch.Tensor:
    """Dataset indices of the images in x (..., 1, 4, 4) float in [0, 1]."""
    pixels = (x[..., 0, 0, :2] * 255).round().long()
    return pixels[..., 0] + 256 * pixels[..., 1]
