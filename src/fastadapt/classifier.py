"""A trained run as a scikit-learn-style few-shot classifier for your own images.

    clf = FewShotClassifier.from_run("runs/omniglot-protonet-cpu")
    clf.fit(["a1.png", "b1.png", "c1.png"], ["a", "b", "c"])     # one or more labelled images per class
    clf.predict(["query.png"])                                    # -> array(['b'])
    clf.predict_proba(["query.png"])                              # -> (1, 3), columns in clf.classes_ order

Images may be file paths, encoded bytes, PIL images, numpy arrays or tensors; each is prepared as the
run's training images were (``ImagePreparation``, recorded in the run directory), so loading a run
needs neither its training data nor a download. ``fit`` adapts the method to the support set as
evaluation does (prototypes, fast weights after its adaptation steps, a fitted head, a memory...).

Inference is thread-safe: the network is in evaluation mode, never changed, and gradients are off in
each call; ``classify`` is a pure function of its arguments, and ``fit`` replaces the fitted support set
in one assignment, so concurrent ``predict`` calls see the old or the new one, never a mix. A web
server shares one instance between requests and calls ``classify`` with each request's images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.registry import method_of
from fastadapt.config.schema import Config
from fastadapt.datasets.folder import IMAGE_SUFFIXES, list_class_folders
from fastadapt.datasets.preparation import ImageLike, ImagePreparation
from fastadapt.runs.directory import load_run
from fastadapt.runs.inputs import read_run_inputs
from fastadapt.training.device import resolve_device
from fastadapt.training.trainer import BEST, LAST


@dataclass(frozen=True)
class Classification:
    """The classes (in the order of the probability columns), the probabilities (queries, classes) and the
    predicted class of each query."""

    classes: list[Hashable]
    probabilities: np.ndarray
    predictions: list[Hashable]


#: The constructor's arguments, which ``get_params`` returns.
PARAMETERS = ("learner", "preparation", "config", "invert", "device")


@dataclass(frozen=True)
class _Fitted:
    classes: list[Hashable]
    adapted: Any


class FewShotClassifier:
    def __init__(self, learner: MetaLearner, preparation: ImagePreparation, config: Config,
                 invert: bool | str | None = None, device: str = "cpu") -> None:
        """``invert``: None prepares images as the training files were and refuses those whose strokes come
        out the other way round; True / False inverts / keeps every image; "auto" flips those that need it."""
        if learner.loss != "cross_entropy":
            raise ValueError(f"a {type(learner).__name__} trained on {config.task.family} does not classify")
        self.device = device  # as given (scikit-learn's get_params returns the constructor's arguments)
        self._device = resolve_device(device)
        self.learner = learner.to(self._device).eval().requires_grad_(False)
        self.preparation, self.config, self.invert = preparation, config, invert
        self._fitted: _Fitted | None = None

    # --- scikit-learn's estimator conventions: sklearn.base.clone gives an unfitted copy ---
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments (``deep`` is accepted for scikit-learn; nothing here is nested)."""
        return {name: getattr(self, name) for name in PARAMETERS}

    def set_params(self, **params: Any) -> "FewShotClassifier":
        """Change constructor arguments; the classifier is built again with them, unfitted."""
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"FewShotClassifier has no parameter {', '.join(unknown)}; it has {', '.join(PARAMETERS)}")
        self.__init__(**{**self.get_params(), **params})
        return self

    def score(self, images: Sequence[ImageLike], labels: Sequence[Hashable]) -> float:
        """Mean accuracy of ``predict(images)`` against ``labels`` (scikit-learn's classifier score)."""
        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        return float(np.mean([p == y for p, y in zip(self.predict(images), labels)]))

    def __repr__(self) -> str:
        task = self.config.task
        fitted = self._fitted
        state = "unfitted" if fitted is None else f"fitted on {len(fitted.classes)} classes {fitted.classes!r}"
        return (f"FewShotClassifier({self.config.method.name}, trained {task.n_way}-way {task.k_shot}-shot on "
                f"{task.family}, images {self.preparation.describe()}, invert={self.invert!r}, "
                f"device={self.device!r}, {state})")

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", invert: bool | str | None = None,
                 device: str = "cpu") -> "FewShotClassifier":
        """The run's best (or last) weights, without its training data."""
        config, learner = load_trained_run(run_dir, checkpoint)
        preparation = read_run_inputs(run_dir, config).preparation
        if preparation is None:
            raise ValueError(f"the run in {run_dir} was not trained on images ({config.task.family} tasks)")
        return cls(learner, preparation, config, invert, device)

    # --- the scikit-learn-style interface ---
    @property
    def classes_(self) -> list[Hashable]:
        return self._require_fit().classes

    def fit(self, images: Sequence[ImageLike], labels: Sequence[Hashable],
            names: Sequence[str] | None = None) -> "FewShotClassifier":
        """Adapt to labelled support images (any hashable labels; classes_ is their sorted set)."""
        self._fitted = self._adapt(images, labels, names)
        return self

    def predict_proba(self, images: Sequence[ImageLike], names: Sequence[str] | None = None) -> np.ndarray:
        """P(class | image), (images, classes), columns in the order of ``classes_``."""
        return self._classify(self._require_fit(), images, names).probabilities

    def predict(self, images: Sequence[ImageLike], names: Sequence[str] | None = None) -> np.ndarray:
        """The most probable class of each image."""
        return np.array(self._classify(self._require_fit(), images, names).predictions, dtype=object)

    def classify(self, support: Sequence[ImageLike], labels: Sequence[Hashable], queries: Sequence[ImageLike],
                 support_names: Sequence[str] | None = None,
                 query_names: Sequence[str] | None = None) -> Classification:
        """Fit and predict in one call that changes nothing on ``self`` (for concurrent callers)."""
        return self._classify(self._adapt(support, labels, support_names), queries, query_names)

    # --- the work ---
    def _require_fit(self) -> _Fitted:
        fitted = self._fitted
        if fitted is None:
            raise ValueError("call fit(images, labels) with the labelled support images first")
        return fitted

    def _adapt(self, images: Sequence[ImageLike], labels: Sequence[Hashable],
               names: Sequence[str] | None) -> _Fitted:
        labels = list(labels)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} support images but {len(labels)} labels")
        try:
            classes = sorted(set(labels))
        except TypeError:
            raise TypeError("labels must be all strings or all numbers, to be sorted into classes_") from None
        if len(classes) < 2:
            raise ValueError(f"the support set needs at least 2 classes to tell apart, got {len(classes)}: "
                             f"{classes}")
        self._check_episode(classes, labels)
        index = {c: i for i, c in enumerate(classes)}
        # class by class, each class's images in the order given, as evaluation episodes are laid out
        order = sorted(range(len(labels)), key=lambda i: index[labels[i]])
        prepared = self.preparation.prepare(images, self.invert, names)[order]
        support_y = torch.tensor([index[labels[i]] for i in order]).unsqueeze(0)
        with torch.no_grad():
            adapted = self.learner.adapt(prepared.unsqueeze(0).to(self._device), support_y.to(self._device))
        return _Fitted(classes, adapted)

    def _check_episode(self, classes: list[Hashable], labels: list[Hashable]) -> None:
        """Methods with an N-way head or memory serve N classes; SNAIL also its K shots."""
        method, task, spec = self.config.method.name, self.config.task, method_of(self.config)
        if not spec.any_way and len(classes) != task.n_way:
            raise ValueError(f"this {method} run was trained {task.n_way}-way and classifies exactly "
                             f"{task.n_way} classes; got {len(classes)}")
        if spec.fixed_shot:
            counts = {c: labels.count(c) for c in classes}
            if set(counts.values()) != {task.k_shot}:
                raise ValueError(f"this {method} run was trained {task.k_shot}-shot and needs exactly "
                                 f"{task.k_shot} images per class; got {counts}")

    def _classify(self, fitted: _Fitted, images: Sequence[ImageLike], names: Sequence[str] | None
                  ) -> Classification:
        queries = self.preparation.prepare(images, self.invert, names).unsqueeze(0).to(self._device)
        with torch.no_grad():
            outputs = self.learner.predict(fitted.adapted, queries)
            probabilities = self.learner.class_probabilities(outputs)[0].cpu().double().numpy()
        predictions = [fitted.classes[i] for i in outputs[0].argmax(-1).tolist()]
        return Classification(list(fitted.classes), probabilities, predictions)


def load_trained_run(run_dir: str | os.PathLike, checkpoint: str = "best") -> tuple[Config, MetaLearner]:
    """A run's config and learner with its best (or last) weights; a missing directory or checkpoint is a
    FileNotFoundError saying what to give."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    weights = run_dir / (BEST if checkpoint == "best" else LAST)
    if checkpoint in ("best", "last") and not weights.is_file():
        raise FileNotFoundError(f"{run_dir} holds no trained weights ({weights.name} is missing): give the "
                                "directory of a trained run (fastadapt train ... --output-dir DIR)")
    return load_run(run_dir, checkpoint)


def read_support_folder(root: str | os.PathLike, min_classes: int = 2) -> tuple[list[Path], list[str]]:
    """The image files of ``root``/<class>/<images> and their class names; one-line errors for a missing
    folder, an empty class, or fewer than ``min_classes`` classes (a classifier tells 2 apart; a detector
    finds 1)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"support folder {root} does not exist or is not a folder")
    classes = list_class_folders(root)
    if len(classes) < min_classes:
        raise ValueError(f"support folder {root} has only one class ({classes[0][0]}); give it one sub-folder "
                         "per class, at least 2")
    files = [file for _, found in classes for file in found]
    return files, [name for name, found in classes for _ in found]


def query_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Query image files: each path a file, or a folder whose image files (sorted) are all taken."""
    files = []
    for path in map(lambda p: Path(p).expanduser(), paths):
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.name.startswith("."))
            if not found:
                raise ValueError(f"query folder {path} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"query image {path} does not exist")
    return files
