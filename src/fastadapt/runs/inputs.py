"""What a run's model reads, recorded in the run directory as ``inputs.json`` when it is trained.

Two things: the task signature (loss, output size, input shape: what building the network needs)
and the image preparation (size, channels, inversion, polarity: how an image file becomes an input).
With them a run is loaded for prediction without its training dataset, new images are prepared as
its training images were, and another domain's images are matched to them for cross-domain
evaluation. Runs from before this file existed fall back to rebuilding their task distribution.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastadapt.config.families import family_of
from fastadapt.config.schema import Config
from fastadapt.datasets.base import ClassDataset
from fastadapt.datasets.preparation import ImagePreparation, dataset_polarity
from fastadapt.tasks.base import TaskDistribution
from fastadapt.tasks.signature import TaskSignature
from fastadapt.training.builders import build_tasks

INPUTS = "inputs.json"
_FORMAT = 1


@dataclass(frozen=True)
class RunInputs:
    signature: TaskSignature
    preparation: ImagePreparation | None  # None for tasks that are not images


def inputs_of(cfg: Config, tasks: TaskDistribution) -> RunInputs:
    """The signature and image preparation of training tasks built from ``cfg``."""
    signature = TaskSignature.of(tasks)
    dataset = getattr(tasks, "dataset", None)
    if signature.input_shape is None or not isinstance(dataset, ClassDataset):
        return RunInputs(signature, None)
    channels, height, width = signature.input_shape
    preparation = ImagePreparation((height, width), channels, family_of(cfg).inverted_files,
                                   dataset_polarity(dataset.images))
    return RunInputs(signature, preparation)


def record_run_inputs(run_dir: str | Path, inputs: RunInputs) -> None:
    """Write ``inputs.json`` atomically (a temporary file, then a rename)."""
    payload = {"format": _FORMAT, "signature": inputs.signature.to_dict(),
               "images": None if inputs.preparation is None else inputs.preparation.to_dict()}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{INPUTS}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(payload, indent=2) + "\n")
    os.chmod(tmp, 0o644)  # readable like config.yaml (mkstemp makes it private)
    os.replace(tmp, run_dir / INPUTS)


def read_run_inputs(run_dir: str | Path, cfg: Config) -> RunInputs:
    """The run's recorded inputs; for a run without ``inputs.json``, those of its rebuilt training tasks
    (which reads its dataset)."""
    path = Path(run_dir) / INPUTS
    if not path.is_file():
        return inputs_of(cfg, build_tasks(cfg, "train"))
    try:
        payload = json.loads(path.read_text())
        images = payload["images"]
        return RunInputs(TaskSignature.from_dict(payload["signature"]),
                         None if images is None else ImagePreparation.from_dict(images))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is unreadable or corrupt ({type(error).__name__}: {error})") from None

