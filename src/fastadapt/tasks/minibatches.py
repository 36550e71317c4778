"""Ordinary supervised mini-batches over all training classes, handed out as a TaskBatch.

Transfer-learning baselines (Chen et al. 2019; Tian et al. 2020) do not train on episodes: they train
one classifier over every training class and only meet episodes at test time. Drawing their batches
here lets them share the meta-learners' trainer, checkpoints, resume and validation unchanged: each
"task" is one training image with its class among all training classes as the single query, and no
support set, so ``sample(B, generator)`` is a mini-batch of B images and a run's meta_batch_size is
its batch size.
"""
from __future__ import annotations

import torch

from fastadapt.datasets.base import ClassDataset
from fastadapt.tasks.base import SPLIT_SEED_OFFSETS, TaskBatch


class ClassMiniBatches:
    """Mini-batches of images of ``dataset``, x (C, H, W) float in [0, 1], y the class index in the dataset."""

    loss = "cross_entropy"

    def __init__(self, dataset: ClassDataset) -> None:
        if not isinstance(dataset, ClassDataset):
            raise TypeError(f"dataset must be a ClassDataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.output_size = dataset.num_classes
        self.input_shape = dataset.image_shape

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """``num_tasks`` different images drawn uniformly (one randperm of the dataset per batch)."""
        if not 1 <= num_tasks <= len(self.dataset):
            raise ValueError(f"a mini-batch holds 1 to {len(self.dataset)} images (the dataset's size), "
                             f"got {num_tasks}")
        chosen = torch.randperm(len(self.dataset), generator=generator)[:num_tasks]
        images = self.dataset.images[chosen].float().div_(255).unsqueeze(1)
        labels = self.dataset.labels[chosen].unsqueeze(1)
        return TaskBatch(images[:, :0], labels[:, :0], images, labels)

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0) -> TaskBatch:
        if split not in SPLIT_SEED_OFFSETS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEED_OFFSETS)}")
        return self.sample(num_tasks, torch.Generator().manual_seed(seed + SPLIT_SEED_OFFSETS[split]))

    def __repr__(self) -> str:
        return f"ClassMiniBatches({self.dataset.num_classes} classes, {len(self.dataset)} images)"
