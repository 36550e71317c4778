"""Run configuration: one flat dataclass, YAML presets shipped with the package, CLI overrides.

Everything a run needs to be rebuilt (and resumed) is in this object, and it is
saved as ``config.yaml`` next to the run's checkpoints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Config:
    # what to learn
    algorithm: str = "maml"
    tasks: str = "sinusoid"
    # task distribution
    k_shot: int = 10
    num_query: int | None = None
    n_way: int = 5
    dataset_split: str = "maml"
    data_root: str | None = None
    rotate_train_classes: bool = False  # each training class also rotated by 90, 180, 270 degrees, as new classes
    image_size: int = 28
    channels: int | None = None
    # model
    model: str = "auto"
    hidden_sizes: list[int] = field(default_factory=lambda: [40, 40])
    conv_channels: int = 64
    norm: str = "auto"
    # method options (metric- and model-based methods)
    full_context_embeddings: bool = False
    cosine_scale: float | None = None  # Matching Networks: learned scale on the cosine, from this value
    neighbours: int = 1
    encoder_from: str | None = None
    # inner loop (optimization-based methods)
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: int | None = None
    first_order: bool = False
    # outer loop
    init_from: str | None = None  # a run directory: start from its best weights, with a fresh optimizer
    meta_lr: float = 1e-3
    meta_optimizer: str = "adam"
    lr_decay_every: int = 0
    lr_decay: float = 0.5
    meta_batch_size: int = 25
    iterations: int = 10_000
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/latest"
    log_every: int = 100
    val_every: int = 1000
    val_tasks: int = 200
    checkpoint_every: int = 1000
    # evaluation
    test_tasks: int = 1000
    eval_steps: list[int] = field(default_factory=lambda: [0, 1, 10])
    eval_shots: list[int] = field(default_factory=list)
    eval_ways: list[int] = field(default_factory=list)
    eval_query: int = 15

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive_ints = ("k_shot", "n_way", "meta_batch_size", "image_size", "log_every", "val_every",
                         "val_tasks", "checkpoint_every", "test_tasks", "inner_steps", "conv_channels",
                         "neighbours", "eval_query")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config: {name} must be a positive integer, got {value!r}")
        if self.iterations < 0:
            raise ValueError(f"config: iterations must be >= 0, got {self.iterations}")
        if self.num_query is not None and self.num_query < 1:
            raise ValueError(f"config: num_query must be a positive integer, got {self.num_query}")
        for name in ("inner_lr", "meta_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"config: {name} must be a positive learning rate, got {getattr(self, name)}")
        for name in ("eval_ways", "eval_shots"):
            if any(not isinstance(v, int) or v < 1 for v in getattr(self, name)):
                raise ValueError(f"config: {name} must hold positive integers, got {getattr(self, name)}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"config: channels must be 1 (grayscale), 3 (RGB) or null (as the data is), "
                             f"got {self.channels!r}")
        if any(s < 0 for s in self.eval_steps):
            raise ValueError(f"config: eval_steps must be >= 0, got {self.eval_steps}")

    # --- (de)serialisation ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config: unknown option(s) {unknown}; known options are {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "Config":
        return Config.from_dict({**self.to_dict(), **changes})

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("fastadapt.configs").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> Config:
    """A shipped preset by name (see ``preset_names()``) or any YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return Config.load(path)
    if name_or_path not in preset_names():
        raise ValueError(f"unknown preset {name_or_path!r}; choose one of {preset_names()} or give a .yaml path")
    text = resources.files("fastadapt.configs").joinpath(f"{name_or_path}.yaml").read_text()
    return Config.from_dict(yaml.safe_load(text) or {})
