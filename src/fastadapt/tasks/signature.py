"""What a model needs to know about its tasks to be built, without their data.

A trained run records this (with its image preparation) so that loading it for prediction does not
read, or download, the dataset it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastadapt.tasks.base import TaskDistribution


@dataclass(frozen=True)
class TaskSignature:
    """``loss`` and ``output_size`` as a TaskDistribution has them; ``input_shape`` (C, H, W) for image
    tasks (None otherwise), ``input_size`` the width of vector inputs."""

    loss: str
    output_size: int
    input_shape: tuple[int, ...] | None = None
    input_size: int = 1

    @classmethod
    def of(cls, tasks: TaskDistribution) -> "TaskSignature":
        shape = getattr(tasks, "input_shape", None)
        return cls(tasks.loss, tasks.output_size, None if shape is None else tuple(shape),
                   getattr(tasks, "input_size", 1))

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "output_size": self.output_size,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "input_size": self.input_size}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TaskSignature":
        shape = values.get("input_shape")
        return cls(values["loss"], values["output_size"], None if shape is None else tuple(shape),
                   values.get("input_size", 1))
