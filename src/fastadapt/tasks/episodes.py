"""N-way K-shot classification episodes drawn from a ClassDataset (Vinyals et al., 2016).

An episode picks N classes, labels them 0..N-1 in a random order, and takes K
support and Q query images of each, all different. Sampling a batch of
episodes is a few tensor ops whatever its size: every class and every image
slot of every task gets a uniform random key and the smallest keys win, then
one indexing call gathers the uint8 images, which become float only at the end.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from fastadapt.datasets.base import ClassDataset
from fastadapt.tasks.base import SPLIT_SEED_OFFSETS, TaskBatch

# Tasks whose random keys are drawn at once by fixed_tasks; bounds its scratch memory, not the result.
_KEY_BLOCK = 512
#: Added to the fixed tasks' seed for the stream that orders their support sets.
_SUPPORT_ORDER_OFFSET = 7919


class EpisodeTasks:
    """p(T) over N-way K-shot episodes of ``dataset``; x is (C, H, W) float in [0, 1], y an int64 label.

    Within a task the examples come class by class: support_y is
    [0]*K + [1]*K + ... and query_y likewise with Q of each. ``input_shape``
    is the (C, H, W) a model reads. Since the dataset is itself one split,
    ``fixed_tasks``'s ``split`` only picks the seed stream.
    """

    loss = "cross_entropy"

    def __init__(self, dataset: ClassDataset, n_way: int = 5, k_shot: int = 1, num_query: int = 15,
                 augment: bool = False) -> None:
        if not isinstance(dataset, ClassDataset):
            raise TypeError(f"dataset must be a ClassDataset, got {type(dataset).__name__}")
        if n_way < 2:
            raise ValueError(f"n_way must be at least 2 classes per episode, got {n_way}")
        if k_shot < 1:
            raise ValueError(f"k_shot must be at least 1 support image per class, got {k_shot}")
        if num_query < 1:
            raise ValueError(f"num_query must be at least 1 query image per class, got {num_query}")
        if n_way > dataset.num_classes:
            raise ValueError(f"asked for {n_way}-way episodes but the dataset has only {dataset.num_classes} classes")
        counts = dataset.images_per_class
        smallest = int(counts.argmin())
        if counts[smallest] < k_shot + num_query:
            raise ValueError(
                f"{k_shot}-shot episodes with {num_query} queries need {k_shot + num_query} images of every class, "
                f"but class {dataset.class_names[smallest]!r} has only {int(counts[smallest])}"
            )
        self.dataset, self.augment = dataset, augment
        self.n_way, self.k_shot, self.num_query = n_way, k_shot, num_query
        self.output_size = n_way
        self.input_shape = dataset.image_shape
        self._table, self._counts = dataset.class_index_table()

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """``num_tasks`` random tasks; with ``augment`` every image distorted by ``random_affine`` (fixed tasks
        never are: they are for evaluation)."""
        batch = self.materialize(self.sample_indices(num_tasks, generator))
        if self.augment:
            batch.support_x = random_affine(batch.support_x, generator)
            batch.query_x = random_affine(batch.query_x, generator)
        return batch

    def sample_indices(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Dataset indices (tasks, n_way, k_shot + num_query): row j is label j's support, then query images.

        Each task uses one row of a single torch.rand call, so a task depends
        only on how many tasks came before it from the same generator.
        """
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        num_classes, max_count = self._table.shape
        keys = torch.rand(num_tasks, num_classes + self.n_way * max_count, generator=generator)
        # The n_way smallest keys pick the classes; their rank is the label, a uniform random assignment.
        classes = keys[:, :num_classes].topk(self.n_way, dim=1, largest=False).indices
        image_keys = keys[:, num_classes:].view(num_tasks, self.n_way, max_count)
        padding = torch.arange(max_count) >= self._counts[classes].unsqueeze(-1)
        image_keys = image_keys.masked_fill(padding, float("inf"))
        slots = image_keys.topk(self.k_shot + self.num_query, dim=2, largest=False).indices
        return self._table[classes.unsqueeze(-1), slots]

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0,
                    shuffle_support: bool = False) -> TaskBatch:
        """A reproducible set of tasks: the same arguments give the same tasks (and more tasks extend fewer).

        With ``shuffle_support`` each task's support set comes in a random order of its own (fixed by
        ``seed`` and ``split``, from a stream of its own so the tasks' images stay the same) instead of
        class by class: for learners that read the support set as a sequence (MANN).
        """
        indices, order = self._fixed_indices(num_tasks, split, seed, shuffle_support)
        return self.materialize(indices, order)

    def iter_fixed_tasks(
        self, num_tasks: int, chunk_size: int, split: str = "test", seed: int = 0, shuffle_support: bool = False
    ) -> Iterator[TaskBatch]:
        """``fixed_tasks(num_tasks, split, seed, shuffle_support)`` in chunks of ``chunk_size`` tasks,
        materialised one at a time.

        600 20-way 5-shot tasks with 15 queries of 28x28 images are 750 MB as
        float; their indices are 2 MB, so only those are held for all tasks.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        indices, order = self._fixed_indices(num_tasks, split, seed, shuffle_support)
        for start in range(0, num_tasks, chunk_size):
            chunk = slice(start, start + chunk_size)
            yield self.materialize(indices[chunk], None if order is None else order[chunk])

    def fixed_classes(self, num_tasks: int, split: str = "test", seed: int = 0) -> torch.Tensor:
        """The dataset class of each label of ``fixed_tasks(num_tasks, split, seed)``'s tasks: (tasks, n_way)."""
        indices, _ = self._fixed_indices(num_tasks, split, seed, shuffle_support=False)
        return self.dataset.labels[indices[:, :, 0]]

    def _fixed_indices(self, num_tasks: int, split: str, seed: int,
                       shuffle_support: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed tasks' dataset indices and, with ``shuffle_support``, each task's support order."""
        if split not in SPLIT_SEED_OFFSETS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEED_OFFSETS)}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        generator = torch.Generator().manual_seed(seed + SPLIT_SEED_OFFSETS[split])
        blocks = [
            self.sample_indices(min(_KEY_BLOCK, num_tasks - start), generator)
            for start in range(0, num_tasks, _KEY_BLOCK)
        ]
        order = None
        if shuffle_support:
            orders = torch.Generator().manual_seed(seed + SPLIT_SEED_OFFSETS[split] + _SUPPORT_ORDER_OFFSET)
            order = torch.rand(num_tasks, self.n_way * self.k_shot, generator=orders).argsort(1)
        return torch.cat(blocks), order

    def materialize(self, indices: torch.Tensor, support_order: torch.Tensor | None = None,
                    images: torch.Tensor | None = None) -> TaskBatch:
        """The tasks of ``sample_indices``'s ``indices``, their images gathered from ``images`` (default: the
        dataset's, on the CPU; a copy already on the GPU gives tasks on the GPU without a transfer)."""
        num_tasks, k = indices.shape[0], self.k_shot
        support, query = indices[:, :, :k].reshape(num_tasks, -1), indices[:, :, k:].reshape(num_tasks, -1)
        labels = torch.arange(self.n_way, device=indices.device).unsqueeze(1)
        # each label k (then num_query) times, by expanding: no kernel that may copy a count from the host, which a
        # CUDA graph (training.captured) could not capture
        support_y = labels.expand(self.n_way, k).reshape(1, -1).repeat(num_tasks, 1)
        if support_order is not None:
            support, support_y = support.gather(1, support_order), support_y.gather(1, support_order)
        images = self.dataset.images if images is None else images
        return TaskBatch(
            images[support].float().div_(255),
            support_y,
            images[query].float().div_(255),
            labels.expand(self.n_way, self.num_query).reshape(1, -1).repeat(num_tasks, 1),
        )

    def __repr__(self) -> str:
        return (
            f"EpisodeTasks({self.n_way}-way {self.k_shot}-shot, {self.num_query} queries, "
            f"{self.dataset.num_classes} classes)"
        )


#: Ranges of ``random_affine``'s distortions: Koch et al.'s (2015) for Omniglot (degrees, shear, scale, pixels
#: at 105x105, scaled to the image's size).
ROTATION, SHEAR, SCALE, SHIFT = 10.0, 0.3, (0.8, 1.2), 2.0 / 105


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``images`` (..., C, H, W) each moved by its own random affine map: rotation within ±ROTATION degrees,
    shear within ±SHEAR on each axis, scale within SCALE on each axis, shift within ±SHIFT of the image
    size; empty (0) pixels come in at the borders. How one person's drawing of a character differs from
    another's, roughly: a character's identity survives it, so a learner trained on such copies learns to
    ignore it (Koch et al., 2015, used these ranges for their Siamese networks on Omniglot)."""
    shape = images.shape
    flat = images.reshape(-1, *shape[-3:])
    u = torch.rand(flat.shape[0], 7, generator=generator) * 2 - 1  # each in [-1, 1)
    angle = u[:, 0] * ROTATION * torch.pi / 180
    low, high = SCALE
    scale = (low + high) / 2 + u[:, 1:3] * (high - low) / 2
    shear = u[:, 3:5] * SHEAR
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shearing = torch.eye(2).repeat(flat.shape[0], 1, 1)
    shearing[:, 0, 1], shearing[:, 1, 0] = shear[:, 0], shear[:, 1]
    # the map moves a point p of the image to linear p + shift; the sampling grid needs its inverse
    inverse = torch.linalg.inv(rotation @ shearing @ torch.diag_embed(scale))
    shift = u[:, 5:7] * SHIFT * 2  # grid coordinates span [-1, 1]: 2 units per image side
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(2))], 2)
    grid = torch.nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
    moved = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.reshape(shape)


class WithinAlphabetEpisodes(EpisodeTasks):
    """Lake et al.'s (2015) one-shot trials: every episode's classes from one alphabet, its support images
    drawn by one person and its queries by another.

    ``alphabets``: the alphabet (any hashable group) of each class; ``drawers`` (N,): who drew each image.
    Every class needs exactly one image by each drawer (Omniglot: 20). An episode picks an alphabet uniformly
    among those with at least ``n_way`` classes (smaller ones never appear: ``alphabets_used`` lists the
    rest), ``n_way`` of its classes with labels in a random order, and ``k_shot + num_query`` different
    drawers: the first ``k_shot`` drew the support images of every class, the others its queries, so no query
    shares its drawer with a support image of its episode. Characters of one alphabet look alike, which makes
    these harder than ``EpisodeTasks``' episodes of classes from anywhere.
    """

    def __init__(self, dataset: ClassDataset, alphabets: Sequence, drawers: torch.Tensor, n_way: int = 20,
                 k_shot: int = 1, num_query: int = 1, augment: bool = False) -> None:
        super().__init__(dataset, n_way, k_shot, num_query, augment)
        if len(alphabets) != dataset.num_classes:
            raise ValueError(f"alphabets names {len(alphabets)} classes, but the dataset has {dataset.num_classes}")
        if not isinstance(drawers, torch.Tensor) or drawers.shape != (len(dataset),):
            raise ValueError(f"drawers must be a tensor of one drawer per image ({len(dataset)},)")
        names = sorted(set(alphabets), key=str)
        group = torch.tensor([names.index(a) for a in alphabets], dtype=torch.int64)
        sizes = torch.bincount(group, minlength=len(names))
        self.alphabets_used = [names[g] for g in (sizes >= n_way).nonzero().flatten().tolist()]
        if not self.alphabets_used:
            raise ValueError(f"{n_way}-way within-alphabet episodes need an alphabet of {n_way} classes; the largest "
                             f"has {int(sizes.max())}")
        kept = [names.index(a) for a in self.alphabets_used]
        self._alphabet_classes = torch.zeros(len(kept), int(sizes[kept].max()), dtype=torch.int64)
        for row, g in enumerate(kept):
            members = (group == g).nonzero().flatten()
            self._alphabet_classes[row, :members.numel()] = members
        self._alphabet_sizes = sizes[kept]
        # image of each (class, drawer): every class must have each drawer exactly once
        # (with one image per drawer, EpisodeTasks' check of images per class is one of drawers)
        people, drawer_column = drawers.unique(return_inverse=True)
        cell = dataset.labels * people.numel() + drawer_column
        if not torch.equal(cell.sort().values, torch.arange(dataset.num_classes * people.numel())):
            raise ValueError(f"within-alphabet episodes need one image of every class by each drawer; the "
                             f"{len(dataset)} images of {dataset.num_classes} classes by {people.numel()} drawers "
                             "are not that")
        self._by_drawer = torch.empty(dataset.num_classes * people.numel(), dtype=torch.int64)
        self._by_drawer[cell] = torch.arange(len(dataset))
        self._by_drawer = self._by_drawer.view(dataset.num_classes, people.numel())

    def sample_indices(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Dataset indices (tasks, n_way, k_shot + num_query), as ``EpisodeTasks.sample_indices``; one row of a
        single torch.rand call per task: the alphabet, the classes, then the drawers."""
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        alphabets, widest = self._alphabet_classes.shape
        drawers = self._by_drawer.shape[1]
        keys = torch.rand(num_tasks, 1 + widest + drawers, generator=generator)
        alphabet = (keys[:, 0] * alphabets).long().clamp_(max=alphabets - 1)
        padding = torch.arange(widest) >= self._alphabet_sizes[alphabet].unsqueeze(1)
        slots = keys[:, 1:1 + widest].masked_fill(padding, float("inf")).topk(self.n_way, dim=1, largest=False)
        classes = self._alphabet_classes[alphabet.unsqueeze(1), slots.indices]
        people = keys[:, 1 + widest:].topk(self.k_shot + self.num_query, dim=1, largest=False).indices
        return self._by_drawer[classes.unsqueeze(2), people.unsqueeze(1)]

    def __repr__(self) -> str:
        return (f"WithinAlphabetEpisodes({self.n_way}-way {self.k_shot}-shot, {self.num_query} queries, "
                f"{len(self.alphabets_used)} alphabets of at least {self.n_way} of {self.dataset.num_classes} "
                "classes)")
