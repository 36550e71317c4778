"""A class-indexed image dataset held entirely in memory as one uint8 tensor.

Few-shot episodes draw a handful of images from a handful of classes thousands
of times a second; keeping every image pre-decoded in a single (N, C, H, W)
uint8 tensor turns that into one fancy-indexing call, and uint8 keeps the whole
of Omniglot at 28x28 in about 25 MB.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch


class ClassDataset:
    """Images (N, C, H, W) uint8, labels (N,) int64 in [0, num_classes), one name per class.

    Every class must have at least one image: an empty class could be drawn
    into an episode and would have nothing to show.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor of shape (N, C, H, W), got {_describe(images)}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be an int64 tensor of shape (N,), got {_describe(labels)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        class_names = list(class_names)
        if not all(isinstance(name, str) for name in class_names):
            raise ValueError("class_names must be strings")
        repeated = sorted(name for name, n in Counter(class_names).items() if n > 1)
        if repeated:
            raise ValueError(f"class names must be unique; repeated: {repeated[:5]}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(
                f"labels must lie in [0, {len(class_names)}) for {len(class_names)} class names, "
                f"got values in [{labels.min().item()}, {labels.max().item()}]"
            )
        counts = torch.bincount(labels, minlength=len(class_names))
        if len(class_names) == 0 or (counts == 0).any():
            empty = [class_names[i] for i in (counts == 0).nonzero().flatten()[:5].tolist()]
            raise ValueError(f"every class needs at least one image; empty: {empty or 'no classes at all'}")
        self.images, self.labels, self.class_names = images, labels, class_names
        self._counts = counts

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def images_per_class(self) -> torch.Tensor:
        """Image count of each class, (num_classes,) int64."""
        return self._counts.clone()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return f"ClassDataset({self.num_classes} classes, {len(self)} images of shape {self.image_shape})"

    def class_index_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(num_classes, max_count) table of image indices per class, padded with 0, and the counts.

        Row c lists the indices of class c's images in dataset order; entries at
        positions >= counts[c] are padding and must not be used.
        """
        order = torch.argsort(self.labels, stable=True)
        counts = self._counts
        starts = torch.cumsum(counts, 0) - counts
        positions = torch.arange(int(counts.max()))
        valid = positions < counts[:, None]
        table = torch.zeros(self.num_classes, positions.numel(), dtype=torch.int64)
        table[valid] = order[(starts[:, None] + positions)[valid]]
        return table, counts.clone()

    def subset(self, classes: Sequence[int | str]) -> "ClassDataset":
        """The images of ``classes`` (indices or names), relabelled 0..len(classes)-1 in the order given.

        The images keep their relative order; only the labels follow ``classes``.
        """
        index_of = {name: i for i, name in enumerate(self.class_names)}
        chosen = []
        for c in classes:
            if isinstance(c, str):
                if c not in index_of:
                    raise KeyError(f"no class named {c!r} in this dataset")
                c = index_of[c]
            elif not 0 <= int(c) < self.num_classes:
                raise IndexError(f"class index {c} out of range for {self.num_classes} classes")
            chosen.append(int(c))
        if len(set(chosen)) != len(chosen):
            raise ValueError("subset() was given the same class more than once")
        new_label = torch.full((self.num_classes,), -1, dtype=torch.int64)
        new_label[torch.tensor(chosen, dtype=torch.int64)] = torch.arange(len(chosen))
        mapped = new_label[self.labels]
        keep = mapped >= 0
        return ClassDataset(self.images[keep], mapped[keep], [self.class_names[c] for c in chosen])

    @staticmethod
    def concat(datasets: Sequence["ClassDataset"]) -> "ClassDataset":
        """All classes of all ``datasets`` side by side; class names must stay unique."""
        if not datasets:
            raise ValueError("concat() needs at least one dataset")
        shapes = {d.image_shape for d in datasets}
        if len(shapes) != 1:
            raise ValueError(f"cannot concatenate datasets with different image shapes {sorted(shapes)}")
        offsets = torch.cumsum(torch.tensor([0] + [d.num_classes for d in datasets[:-1]]), 0).tolist()
        return ClassDataset(
            torch.cat([d.images for d in datasets]),
            torch.cat([d.labels + offset for d, offset in zip(datasets, offsets)]),
            [name for d in datasets for name in d.class_names],
        )

    def with_rotations(self, angles: Sequence[int] = (0, 90, 180, 270)) -> "ClassDataset":
        """Each class once per angle (counter-clockwise, multiples of 90), as a new class ``name/rotDDD``.

        A rotated character is a different character: Vinyals et al. (2016)
        used this to multiply Omniglot's classes by four. The new classes come
        in blocks, all classes at the first angle, then all at the next.
        """
        if not angles or any(a % 90 for a in angles) or len(set(a % 360 for a in angles)) != len(angles):
            raise ValueError(f"angles must be distinct multiples of 90 degrees, got {list(angles)}")
        if any(a % 180 for a in angles) and self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"90-degree rotations need square images, got {tuple(self.images.shape[2:])}")
        rotated = [
            ClassDataset(
                torch.rot90(self.images, (a // 90) % 4, dims=(2, 3)).contiguous(),
                self.labels,
                [f"{name}/rot{a % 360:03d}" for name in self.class_names],
            )
            for a in angles
        ]
        return ClassDataset.concat(rotated)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
