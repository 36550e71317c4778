"""What a task is: a support set to adapt on and a query set to be judged on.

Every task distribution p(T) hands out *batches* of tasks as stacked tensors
(tasks x examples x ...), so algorithms can process a meta-batch in one
vectorised call instead of a Python loop over tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch

#: Offsets added to a seed so that the fixed train, val and test tasks of a family never coincide.
SPLIT_SEED_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
#: A torch CPU generator keeps only the low 32 bits of its seed, so training seeds are confined to
#: [0, TRAINING_SEEDS) and test sets from 2 on are drawn from seeds in [TRAINING_SEEDS, 2**32), which no
#: training stream can start from. Test set 1 keeps the seed every figure before test sets were versioned used.
TRAINING_SEEDS = 2**31
#: Test set N >= 2 is drawn with ``fixed_tasks(..., seed=seed_of_test_set(N))``: its stream starts at seed
#: TRAINING_SEEDS + (N - 2) * TEST_SET_STRIDE + the test offset.
TEST_SET_STRIDE = 2**16
MAX_TEST_SET = 1000


def seed_of_test_set(test_set: int) -> int:
    """The ``seed`` argument of ``fixed_tasks(num_tasks, "test", seed)`` that draws test set ``test_set``.

    Test set 1 is the draw of every figure before test sets were versioned (seed 0); a test set looked at
    more than once is replaced by the next, a seed stream that neither training (whose seeds lie below
    TRAINING_SEEDS) nor validation (seed 0) can start from.
    """
    if not 1 <= test_set <= MAX_TEST_SET:
        raise ValueError(f"test_set must lie in [1, {MAX_TEST_SET}], got {test_set}")
    return 0 if test_set == 1 else TRAINING_SEEDS + (test_set - 2) * TEST_SET_STRIDE


def fixed_stream_seeds() -> dict[str, int]:
    """The seeds the fixed validation tasks and test set 1 are drawn from, which a training seed must not be."""
    return {"validation": SPLIT_SEED_OFFSETS["val"], "test set 1": SPLIT_SEED_OFFSETS["test"]}


@dataclass
class TaskBatch:
    """A batch of tasks. Shapes: x is (tasks, examples, *features); y is (tasks, examples, ...)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("support_x", "support_y", "query_x", "query_y"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"TaskBatch.{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() < 2:
                raise ValueError(
                    f"TaskBatch.{name} must have shape (tasks, examples, ...), got {tuple(value.shape)}"
                )
        tasks = {getattr(self, f.name).shape[0] for f in fields(self)}
        if len(tasks) != 1:
            raise ValueError(f"TaskBatch tensors disagree on the number of tasks: {sorted(tasks)}")
        for side in ("support", "query"):
            x, y = getattr(self, f"{side}_x"), getattr(self, f"{side}_y")
            if x.shape[:2] != y.shape[:2]:
                raise ValueError(
                    f"TaskBatch {side}_x {tuple(x.shape)} and {side}_y {tuple(y.shape)} "
                    "disagree on (tasks, examples)"
                )
        if self.support_x.shape[2:] != self.query_x.shape[2:]:
            raise ValueError(
                f"support_x features {tuple(self.support_x.shape[2:])} differ from "
                f"query_x features {tuple(self.query_x.shape[2:])}"
            )

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))

    def __getitem__(self, index: slice | torch.Tensor) -> "TaskBatch":
        """Select tasks (a slice or index tensor over the first dimension)."""
        return TaskBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def __len__(self) -> int:
        return self.num_tasks

    def split(self, chunk_size: int) -> list["TaskBatch"]:
        return [self[i : i + chunk_size] for i in range(0, self.num_tasks, chunk_size)]

    @staticmethod
    def cat(batches: list["TaskBatch"]) -> "TaskBatch":
        return TaskBatch(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(TaskBatch)))


class TaskDistribution(Protocol):
    """p(T): samples batches of tasks from a seeded generator.

    ``loss`` names the per-task loss ("mse" for regression, "cross_entropy" for
    classification); ``output_size`` is what a model's head must produce.
    """

    loss: str
    output_size: int

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch: ...

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0) -> TaskBatch:
        """A reproducible set of evaluation tasks: the same arguments give the same tasks."""
        ...


@runtime_checkable
class IndexedTasks(Protocol):
    """Tasks drawn as indices into one tensor of images and gathered from it: ``sample_indices`` gives
    (tasks, n_way, k_shot + num_query) indices into ``dataset.images``, ``materialize`` the batch of them,
    gathered from a copy of those images (already on the GPU). A captured step (``training.captured``) replays
    exactly that, so any task distribution that satisfies this protocol can train in a CUDA graph."""

    dataset: Any
    n_way: int
    k_shot: int
    num_query: int

    def sample_indices(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor: ...

    def materialize(self, indices: torch.Tensor, support_order: torch.Tensor | None = None,
                    images: torch.Tensor | None = None) -> TaskBatch: ...
