"""Cross-domain evaluation: a trained run on the test episodes of another task family, no retraining.

The other domain's images are prepared like the run's training images: the run's size and channels,
and inverted when their strokes come the other way round (scikit-learn's digits are light on dark,
as Omniglot is stored; a folder of black-on-white scans is inverted for an Omniglot model).
"""
from __future__ import annotations

from pathlib import Path

from fastadapt.algorithms.base import MetaLearner
from fastadapt.config.families import FAMILIES, family_names
from fastadapt.config.schema import Config
from fastadapt.datasets.base import ClassDataset
from fastadapt.datasets.preparation import ImagePreparation, dataset_polarity, describe_polarity, opposite
from fastadapt.runs.directory import evaluate_learner
from fastadapt.runs.inputs import read_run_inputs
from fastadapt.training.builders import eval_settings
from fastadapt.training.evaluation import Estimate


def domain_dataset(cfg: Config, preparation: ImagePreparation, family: str, data_root: str | None = None
                   ) -> tuple[ClassDataset, Config, str]:
    """The test classes of another task family, prepared like the run's training images: resized to its
    size, converted to its channels, and inverted when their polarity is the opposite of the run's.
    Returns the dataset, the config with the family changed, and a note on what was done to the images."""
    if family not in family_names("images"):
        raise ValueError("cross-domain evaluation needs an image task family, one of "
                         f"{sorted(family_names('images'))}; "
                         f"got {family!r}")
    height, width = preparation.size
    if height != width:
        raise ValueError(f"the run reads {height}x{width} images; image_size is square, so cross-domain "
                         "evaluation needs a square input size")
    domain = cfg.replace(tasks=family, data_root=data_root if data_root is not None else cfg.task.data_root,
                         image_size=height, channels=preparation.channels, rotate_train_classes=False)
    dataset = FAMILIES[family].build(domain, "test")
    found = dataset_polarity(dataset.images)
    note = f"{family}: {dataset.num_classes} classes, {len(dataset)} images, {preparation.describe()}"
    if preparation.polarity is not None and found == opposite(preparation.polarity):
        dataset = ClassDataset(255 - dataset.images, dataset.labels, dataset.class_names)
        note += f" (inverted: the images are {describe_polarity(found)})"
    elif preparation.polarity is not None and found is None:
        note += " (polarity not matched: these images have no common one)"
    return dataset, domain, note


def evaluate_cross_domain(run_dir: str | Path, cfg: Config, learner: MetaLearner, family: str,
                          data_root: str | None = None, steps: list[int] | None = None, ways_asked: bool = False,
                          progress: bool = False) -> tuple[dict[str, Estimate], str]:
    """The run's evaluation table on ``family``'s test classes, and a title saying what was evaluated.

    The run's own evaluation ways that the other domain has too few classes for (20-way on the ten digits)
    are left out, and the title says so; ways the user asked for (``ways_asked``) that do not fit are an error.
    ``progress``: a progress bar, as ``evaluate_learner``'s.
    """
    preparation = read_run_inputs(run_dir, cfg).preparation
    if preparation is None:
        raise ValueError(f"the run in {run_dir} was not trained on images; it has no other domain to try")
    dataset, domain, note = domain_dataset(cfg, preparation, family, data_root)
    ways = sorted({way for way, _ in eval_settings(domain)})
    fitting = [way for way in ways if way <= dataset.num_classes]
    if len(fitting) < len(ways) and (ways_asked or not fitting):
        raise ValueError(f"--eval-ways {' '.join(map(str, ways))}: the test classes of {family} are only "
                         f"{dataset.num_classes}; ask for at most {dataset.num_classes}-way episodes")
    skipped = sorted(set(ways) - set(fitting))
    results = evaluate_learner(domain.replace(eval_ways=fitting), learner, steps=steps, dataset=dataset,
                               progress=progress)
    evaluation = domain.evaluation
    title = (f"trained on {cfg.task.family}, evaluated on {note}: accuracy on {evaluation.test_tasks} fixed test "
             f"episodes, {evaluation.eval_query} queries per class (mean ± 95% CI)")
    if skipped:
        title += (f"; {', '.join(f'{way}-way' for way in skipped)} left out: {family} has "
                  f"{dataset.num_classes} test classes")
    return results, title
