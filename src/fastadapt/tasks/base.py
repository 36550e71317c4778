"""What a task is: a support set to adapt on and a query set to be judged on.

Every task distribution p(T) hands out *batches* of tasks as stacked tensors
(tasks x examples x ...), so algorithms can process a meta-batch in one
vectorised call instead of a Python loop over tasks. What a batch holds is its
family's to define (image episodes: ``TaskBatch``; MDPs: ``tasks.mdp.MDPBatch``;
canvases: ``SegmentationBatch``, ``DetectionBatch``); the trainer and the
evaluation read only the ``Batch`` contract.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

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


class Batch:
    """A batch of tasks, holding whatever its family's tasks are made of. The trainer and the evaluation need
    only this: how many tasks it holds, a copy on a device, a selection of its tasks (a slice or an index
    tensor), and chunks of them (memory-saving mode). A learner reads the batch type of the families it
    learns on."""

    @property
    def num_tasks(self) -> int:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Batch":
        raise NotImplementedError

    def __getitem__(self, index: slice | torch.Tensor) -> "Batch":
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_tasks

    def split(self, chunk_size: int) -> list["Batch"]:
        return [self[i : i + chunk_size] for i in range(0, self.num_tasks, chunk_size)]


class TensorBatch(Batch):
    """A dataclass ``Batch`` whose every field is a tensor with the tasks first: moved and indexed field by
    field."""

    #: copy to a device without waiting (image episodes: pinned-memory transfers overlap the step)
    non_blocking: ClassVar[bool] = False

    @property
    def num_tasks(self) -> int:
        return getattr(self, fields(self)[0].name).shape[0]

    def to(self, device: torch.device | str) -> "TensorBatch":
        return type(self)(*(getattr(self, f.name).to(device, non_blocking=self.non_blocking) for f in fields(self)))

    def __getitem__(self, index: slice | torch.Tensor) -> "TensorBatch":
        return type(self)(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def cat(cls, batches: list["TensorBatch"]) -> "TensorBatch":
        """The tasks of ``batches``, one after the other."""
        return cls(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)))


@dataclass
class TaskBatch(TensorBatch):
    """A batch of tasks. Shapes: x is (tasks, examples, *features); y is (tasks, examples, ...)."""

    non_blocking: ClassVar[bool] = True

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



class TaskDistribution(Protocol):
    """p(T): samples batches of tasks from a seeded generator.

    ``loss`` names the per-task loss ("mse" for regression, "cross_entropy" for
    classification); ``output_size`` is what a model's head must produce.
    """

    loss: str
    output_size: int

    def sample(self, num_tasks: int, generator: torch.Generator) -> Batch: ...

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0) -> Batch:
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
