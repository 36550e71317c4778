"""The model ``fastadapt serve`` serves, and what the page says about it.

Given a run directory, that run. Without one: the newest run under ./runs that classifies images; else,
where Omniglot's archives are on this machine, a quick Prototypical Network trained on the spot (into
runs/serve-protonet, which later starts find as their newest run); else k-NN on raw pixels, which needs
neither training nor data. The page shows which it is, with the run's recorded test accuracy and its
learning curves.

A drawing from the page is redrawn as Omniglot's drawings look (``datasets.drawing``) when the model was
trained on Omniglot (or is the pixel k-NN, prepared as Omniglot is), so the run's own preparation then
sees what it saw in training; for other runs a drawing is an image like any other.
"""
from __future__ import annotations

import base64
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from PIL import Image

from fastadapt.algorithms import NearestNeighbours
from fastadapt.algorithms.registry import method_of
from fastadapt.classifier import Classification, FewShotClassifier
from fastadapt.config.families import family_of
from fastadapt.config.presets import load_preset
from fastadapt.config.schema import Config
from fastadapt.datasets.drawing import as_omniglot_drawing
from fastadapt.datasets.omniglot import find_omniglot_archives
from fastadapt.datasets.preparation import ImagePreparation
from fastadapt.runs.directory import (episode_shapes, load_metrics, load_run, look_at_test_set, read_test_results,
                                      record_test_results, results_payload, train)
from fastadapt.training.trainer import BEST

#: Where the quick ProtoNet is trained when there is no run to serve, and how long.
QUICK_RUN = Path("runs") / "serve-protonet"
QUICK_ITERATIONS = 500
#: The page offers 2 to this many classes.
MAX_CLASSES = 20
#: Points per learning curve sent to the page.
CURVE_POINTS = 400
#: Images as Omniglot's loader prepares them (white strokes on black once its black-on-white files are inverted).
OMNIGLOT_PREPARATION = ImagePreparation((28, 28), 1, invert=True, polarity="light-on-dark")


@dataclass(frozen=True)
class ServedModel:
    """A classifier and what the page shows about it. ``source``: "run" (a trained run), "quick" (trained
    here just now) or "pixels" (k-NN on raw pixels, nothing learned)."""

    classifier: FewShotClassifier
    source: str
    summary: str
    run_dir: Path | None = None
    redraws_drawings: bool = True
    test_results: dict | None = None
    curves: dict[str, list[list[float]]] = field(default_factory=dict)

    # --- what the page shows ---
    def curve_titles(self) -> dict[str, str]:
        """Titles of the accuracy curves that name their episodes where training and validation differ (their
        accuracies are then not comparable: 60-way training episodes are harder than 5-way validation ones)."""
        shapes = None if self.source == "pixels" else episode_shapes(self.classifier.config)
        if shapes is None or shapes[0] == shapes[1]:
            return {}
        return {"accuracy": f"training accuracy ({shapes[0]})", "val_accuracy": f"validation accuracy ({shapes[1]})"}

    def describe(self) -> dict[str, Any]:
        cfg = self.classifier.config
        method, task = cfg.method.name, cfg.task
        spec = method_of(cfg)
        ways = [2, MAX_CLASSES] if spec.any_way else [task.n_way, task.n_way]
        return {
            "source": self.source, "summary": self.summary,
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "method": method,
            "dataset": "nothing (raw pixels)" if self.source == "pixels" else family_of(cfg).words(cfg),
            "trained": None if self.source == "pixels" else f"{task.n_way}-way {task.k_shot}-shot episodes",
            "ways": ways, "shots": task.k_shot if spec.fixed_shot else None,
            "drawings": ("redrawn as Omniglot's drawings (stroke width, size, centring), then prepared as the "
                         "training images were" if self.redraws_drawings else "prepared as the training images "
                         "were, as drawn (dark strokes on white)"),
            "preparation": self.classifier.preparation.describe(),
            "test_accuracy": _accuracy_rows(self.test_results),
            "best_validation_accuracy": max((p[1] for p in self.curves.get("val_accuracy", [])), default=None),
            "validation_episodes": None if self.source == "pixels" else episode_shapes(cfg)[1],
            "curve_titles": self.curve_titles(),
            "curves": self.curves,
        }

    # --- the work ---
    def classify(self, support: Sequence[Image.Image], labels: Sequence[Hashable], queries: Sequence[Image.Image],
                 support_drawn: Sequence[bool], queries_drawn: Sequence[bool],
                 invert: bool | str | None = None) -> tuple[Classification, torch.Tensor]:
        """The classification of ``queries`` given the labelled ``support`` images, and the network's inputs
        (support then queries, (N, C, H, W) in [0, 1]). Drawn images are redrawn first (see the module)."""
        prepared = self.prepare([*support, *queries], [*support_drawn, *queries_drawn], invert)
        inputs = list(prepared)  # already prepared: the classifier (invert=False) leaves them as they are
        result = self.classifier.classify(inputs[:len(support)], labels, inputs[len(support):])
        return result, prepared

    def prepare(self, images: Sequence[Image.Image], drawn: Sequence[bool],
                invert: bool | str | None = None) -> torch.Tensor:
        names = [f"{'drawing' if d else 'image'} {i + 1}" for i, d in enumerate(drawn)]
        redrawn = [as_omniglot_drawing(image) if d and self.redraws_drawings else image
                   for image, d in zip(images, drawn)]
        return self.classifier.preparation.prepare(redrawn, invert, names)


def _accuracy_rows(payload: dict | None) -> dict[str, dict[str, float]] | None:
    """{"5-way 1-shot": {"mean": ..., "ci95": ..., "num_tasks": ...}, ...} from a recorded evaluation."""
    if payload is None:
        return None
    return {row: estimate for row, estimate in payload["results"].items()
            if isinstance(estimate, dict) and {"mean", "ci95"} <= set(estimate)}


def _curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """Each logged metric as [[iteration, value], ...], at most ``CURVE_POINTS`` evenly spaced points."""
    try:
        records = load_metrics(run_dir)
    except (FileNotFoundError, ValueError):
        return {}
    curves: dict[str, list[list[float]]] = {}
    for key in ("loss", "accuracy", "val_accuracy"):
        points = [[r["iteration"], r[key]] for r in records if isinstance(r.get(key), (int, float))]
        step = max(1, -(-len(points) // CURVE_POINTS))
        if points:
            curves[key] = points[::step] if points[::step][-1] == points[-1] else points[::step] + [points[-1]]
    return curves


# --- where the model comes from ---
def serve_run(run_dir: str | os.PathLike, checkpoint: str = "best", source: str = "run") -> ServedModel:
    """A trained run: its weights, preparation, recorded test accuracy and learning curves."""
    run_dir = Path(run_dir)
    classifier = FewShotClassifier.from_run(run_dir, checkpoint, invert=False)
    cfg = classifier.config
    words, family = "trained here just now" if source == "quick" else "run", family_of(cfg)
    return ServedModel(classifier, source, f"{cfg.method.name} on {family.words(cfg)}: {words} {run_dir}",
                       run_dir, family.omniglot_drawings, read_test_results(run_dir), _curves(run_dir))


def serve_pixels() -> ServedModel:
    """1-nearest-neighbour on raw 28x28 pixels, images prepared as Omniglot's: no training, no data."""
    cfg = Config().replace(tasks="omniglot", algorithm="knn", model="pixels", n_way=5, k_shot=1)
    classifier = FewShotClassifier(NearestNeighbours(None, k=1), OMNIGLOT_PREPARATION, cfg, invert=False)
    return ServedModel(classifier, "pixels", "k-NN on raw pixels: nothing learned, the floor any trained model "
                       "should beat (train one with: fastadapt train omniglot-protonet-cpu)")


def image_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """Run directories under ``root`` (and one level deeper) with trained weights, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [weights.parent for pattern in (f"*/{BEST}", f"*/*/{BEST}") for weights in root.glob(pattern)]
    return sorted(found, key=lambda run: (run / BEST).stat().st_mtime, reverse=True)


def newest_image_run(root: str | os.PathLike = "runs") -> ServedModel | None:
    """The newest run under ``root`` that classifies images, or None; runs that do not are skipped."""
    for run_dir in image_runs(root):
        try:
            if family_of(Config.load(run_dir / "config.yaml")).kind != "images":
                continue
            return serve_run(run_dir)
        except (ValueError, FileNotFoundError, OSError, KeyError, RuntimeError) as error:
            print(f"fastadapt: skipping {run_dir}: {error}", file=sys.stderr)
    return None


def omniglot_here(data_root: str | os.PathLike | None) -> str | None:
    """The folder of Omniglot's archives if they are on this machine (``data_root``, $FASTADAPT_DATA or the
    cache), without downloading them; None where they are not."""
    try:
        return str(find_omniglot_archives(data_root, download=False)[0].parent)
    except FileNotFoundError:
        return None


def quick_protonet_config(data_root: str, output_dir: str | os.PathLike = QUICK_RUN,
                          iterations: int = QUICK_ITERATIONS, **overrides: Any) -> Config:
    """The omniglot-protonet-cpu preset cut short: 20-way episodes, ``iterations`` of them, tested on 5- and
    20-way 1-shot episodes (6 minutes in all on one thread of a busy 2-core CPU: docs/benchmarks.md)."""
    settings = dict(data_root=data_root, n_way=20, iterations=iterations, val_every=max(1, iterations // 2),
                    checkpoint_every=max(1, iterations // 2), val_tasks=100, log_every=max(1, iterations // 20),
                    eval_ways=[5, 20], eval_shots=[1], output_dir=str(output_dir))
    return load_preset("omniglot-protonet-cpu").replace(**{**settings, **overrides})


def train_quick_protonet(cfg: Config, evaluate: bool = True, progress: bool = True) -> Path:
    """Train (or resume) the quick ProtoNet of ``cfg`` and record its test accuracy; its run directory."""
    run_dir = Path(cfg.training.output_dir)
    train(cfg, resume=(run_dir / "last.pt").exists(), progress=progress)
    if evaluate:
        cfg, learner = load_run(run_dir, "best")
        results = look_at_test_set(run_dir, cfg, learner)
        record_test_results(run_dir, results_payload(run_dir, "best", cfg, cfg.task.family, results))
    return run_dir


def choose_model(run_dir: str | os.PathLike | None, runs_root: str | os.PathLike = "runs",
                 data_root: str | os.PathLike | None = None, allow_training: bool = True) -> ServedModel:
    """The model to serve; see the module docstring for the order of choices."""
    if run_dir is not None:
        return serve_run(run_dir)
    served = newest_image_run(runs_root)
    if served is not None:
        return served
    omniglot = omniglot_here(data_root) if allow_training else None
    if omniglot is not None:
        cfg = quick_protonet_config(omniglot, Path(runs_root) / QUICK_RUN.name)
        print(f"fastadapt: no trained image run under {runs_root}/; training a quick ProtoNet on Omniglot into "
              f"{cfg.training.output_dir} ({cfg.training.iterations} episodes, then 600 test episodes: 6 minutes "
              "on one thread of a busy 2-core CPU, measured; pass --no-train to serve k-NN on raw pixels instead)",
              file=sys.stderr)
        return serve_run(train_quick_protonet(cfg), source="quick")
    return serve_pixels()


def png_data_url(image: torch.Tensor) -> str:
    """A prepared network input (C, H, W) in [0, 1] as a PNG data URL, for the page to show."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return png_url(np.ascontiguousarray(array.squeeze(2) if array.shape[2] == 1 else array))


def png_url(array: np.ndarray) -> str:
    """An image (H, W) / (H, W, 3 or 4) uint8 as a PNG data URL."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
