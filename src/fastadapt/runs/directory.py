"""A run is a directory: config.yaml, metrics.jsonl, last.pt and best.pt (and test_results.json once evaluated).

These functions are the Python API behind ``fastadapt train`` and ``fastadapt eval``: build a run's learner
(which may start from another run's weights), train it into its directory, load it, evaluate it.
"""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from fastadapt.algorithms.architecture import ArchitectureLearning
from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.registry import method_of
from fastadapt.config.families import WITHIN_ALPHABET_WAY, family_of
from fastadapt.config.schema import FLAT, WITHIN_ALPHABET, Config
from fastadapt.datasets.base import ClassDataset
from fastadapt.datasets.download import atomic_file
from fastadapt.runs.inputs import inputs_of, read_run_inputs, record_run_inputs
from fastadapt.tasks import EpisodeTasks, WithinAlphabetEpisodes
from fastadapt.tasks.base import Batch, TaskDistribution
from fastadapt.training import distributed
from fastadapt.training.builders import build_tasks, eval_settings, fixed_seed
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.checks import check_config
from fastadapt.training.device import resolve_device
from fastadapt.training.evaluation import FEW_TEST_CLASSES, Estimate, evaluate, row_label, step_label
from fastadapt.training.networks import ARCHITECTURE_FILE, build_encoder, build_model, resolve_model
from fastadapt.training.precision import check_precision
from fastadapt.training.threads import choose_threads, using_threads
from fastadapt.training.trainer import BEST, LAST, Trainer, TrainResult

#: What ``fastadapt train`` records of its test evaluation in the run directory (eval's --json format).
TEST_RESULTS = "test_results.json"
#: How many times each test set of a run has been evaluated, {"1": 2, "2": 1}; counted when a test starts (a
#: test that then fails or is cut off may have been seen). Before test sets were versioned it held {"looks": N},
#: looks at test set 1.
TEST_LOOKS = "test_looks.json"
EVAL_CHUNK = 200
#: At most this many input values (512 28x28 images) go into one evaluation chunk of episodes: on CPU a
#: Conv-4 forward over 500 images at a time ran 4x faster than over 4,000, whose activations overflow the caches.
MAX_CHUNK_VALUES = 512 * 28 * 28
#: Settings a resumed run may change, as each declares (``setting(resumable=...)``): they change neither the
#: weights it trains nor its validation episodes (which the best checkpoint's score was measured on).
#: ``data_root`` may change where the family says so (Omniglot: the same archives are found, their checksums
#: key the decoded cache), not for a folder.
RESUMABLE_CHANGES = frozenset(s.flat for s in FLAT.values() if s.resumable)
#: Of those, the ones that say how the run is tested: ``load_run`` takes them from config.yaml (the latest).
EVALUATION_CHANGES = tuple(s.flat for s in FLAT.values() if s.resumable == "evaluation")


def fixed_batches(tasks: TaskDistribution, num_tasks: int, split: str, chunk: int = EVAL_CHUNK,
                  shuffle_support: bool = False, seed: int = 0) -> Iterable[Batch]:
    """The fixed evaluation tasks of a split, in chunks (the same tasks every call); ``seed`` picks the draw
    (``builders.fixed_seed``: a run's test set).

    Episodes are materialised chunk by chunk, each small enough for one forward pass. With
    ``shuffle_support`` each episode's support set comes in a fixed random order instead of class by
    class, for learners that read it as a sequence and were trained on random orders (MANN).
    """
    if hasattr(tasks, "iter_fixed_tasks"):  # image episodes, materialised a chunk at a time
        values = tasks.n_way * (tasks.k_shot + tasks.num_query) * math.prod(tasks.input_shape)
        return tasks.iter_fixed_tasks(num_tasks, max(1, min(chunk, MAX_CHUNK_VALUES // values)), split=split,
                                      seed=seed, shuffle_support=shuffle_support)
    return tasks.fixed_tasks(num_tasks, split=split, seed=seed).split(chunk)


def check_resumable(cfg: Config, run_dir: Path) -> None:
    """Refuse to resume with settings that would change the weights or the validation episodes (``cfg`` resolved;
    the saved settings resolved too, as a config.yaml written before a default moved into the resolution holds
    it unset)."""
    saved = Config.load(run_dir / "config.yaml").resolved().flat()
    allowed = RESUMABLE_CHANGES | ({"data_root"} if family_of(cfg).data_root_may_move else set())
    changed = sorted(k for k, v in cfg.flat().items() if k not in allowed and saved[k] != v)
    if changed:
        raise ValueError(f"cannot resume {run_dir} with other {', '.join(changed)} than it was started with "
                         f"({', '.join(f'{k}={saved[k]!r}' for k in changed)}): they change the weights it trains "
                         f"or the validation episodes its best score was measured on. Only "
                         f"{', '.join(sorted(allowed))} may change when resuming")


def train(cfg: Config, resume: bool = False, progress: bool = True,
          nproc: int | None = None) -> tuple[TrainResult, MetaLearner]:
    """Meta-train as ``cfg`` says; with ``resume`` continue the run in ``cfg.training.output_dir``.

    Every setting is checked before the first iteration (names first, then numbers), including the
    evaluation settings used after training. ``nproc`` > 1 splits every meta-batch over that many local
    processes (see ``training.distributed``); under torchrun each process runs this function.
    """
    cfg = cfg.resolved()
    run_dir = Path(cfg.training.output_dir)
    check_precision(cfg.training.precision)
    if resume:
        if not (run_dir / LAST).exists():
            raise FileNotFoundError(f"cannot resume: {run_dir} holds no {LAST} (no checkpoint was written yet, "
                                    "or this is not a run directory); start the run without --resume")
        if (run_dir / "config.yaml").exists():
            check_resumable(cfg, run_dir)
    else:
        for name in (LAST, "metrics.jsonl"):
            if (run_dir / name).exists():
                raise FileExistsError(f"{run_dir} already holds a run ({name}); pass --resume to continue it or "
                                      "choose another --output-dir")
    check_config(cfg)
    if (method_of(cfg).rl and not method_of(cfg).splits_over_processes
            and max(nproc or 1, distributed.launched_world_size() or 1) > 1):
        raise ValueError(f"--nproc: {cfg.method.name} runs in one process (its PPO update normalises advantages and "
                         "draws minibatches over the whole meta-batch); its simulator already steps every task at once")
    if nproc is not None:
        distributed.check_split(cfg.training.meta_batch_size, nproc)
    threads, why = choose_threads(cfg, resolve_model(cfg), threads_started_with(run_dir) if resume else None)
    if nproc is not None and nproc > 1 and distributed.launched_world_size() is None:
        distributed.spawn(train, nproc, cfg.replace(threads=max(1, threads // nproc)), resume=resume,
                          progress=progress)
        payload = load_checkpoint(run_dir / (LAST if (run_dir / LAST).exists() else BEST))
        learner = build_learner(cfg, build_tasks(cfg, "train"))
        learner.load_state_dict(payload["learner"])
        return TrainResult(payload["iteration"], payload["best_score"], run_dir), learner
    with distributed.process_group(cfg.training.device, nproc) as group, using_threads(threads):
        tasks = build_tasks(cfg, "train")
        if distributed.is_main_process() and family_of(cfg).kind != "mdp":
            record_run_inputs(run_dir, inputs_of(cfg, tasks))
        learner = build_learner(cfg, tasks)
        if cfg.training.init_from is not None and not (run_dir / LAST).exists():
            initialise_from(learner, cfg.training.init_from)
        val_batches = partial(fixed_batches, build_tasks(cfg, "val"), cfg.training.val_tasks, "val",
                              shuffle_support=learner.reads_support_in_order)
        if group is None:
            trainer = Trainer(cfg, learner, tasks, val_batches, device=resolve_device(cfg.training.device),
                              progress=progress)
        else:
            trainer = distributed.DistributedTrainer(group, cfg, learner, tasks, val_batches, progress=progress)
        trainer.say(f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)} ({why})")
        if resume:
            iteration = trainer.resume()
            trainer.say(f"resuming {run_dir} from iteration {iteration} of {cfg.training.iterations}")
        result = trainer.fit()
        if method_of(cfg).searches_architecture and distributed.is_main_process():
            write_architecture(run_dir)
        return result, learner


def trained_run(cfg: Config, train_missing: bool = True) -> Path:
    """The run of ``cfg`` in its output directory, as a benchmark needs it: reused when it has reached its
    iterations, else trained or resumed (unless ``train_missing`` is off; a run of 0 iterations is always
    made). A directory holding a run of other settings (an older version of a preset), or one trained longer than
    ``cfg`` asks (its best checkpoint may come from past the budget asked for), is refused with a ValueError
    rather than reused or resumed; a finished run reused with other resumable settings (more test tasks, say)
    records them in its config.yaml, as a resume would, so that ``load_run`` tests it as ``cfg`` says."""
    cfg = cfg.resolved()  # as the run directory's config.yaml holds it
    run_dir = Path(cfg.training.output_dir)
    saved = Config.load(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None
    if saved is not None:
        try:
            check_resumable(cfg, run_dir)
        except ValueError as error:
            raise ValueError(f"{error}; the preset has changed since: give another output directory") from None
    last = load_checkpoint(run_dir / LAST) if (run_dir / LAST).exists() else None
    if last is not None and last["iteration"] > cfg.training.iterations:
        raise ValueError(f"{run_dir} holds a run trained {last['iteration']:,} iterations, more than the "
                         f"{cfg.training.iterations:,} asked for: its figures would be reported as the shorter "
                         "run's; ask for its iterations or choose another output directory")
    done = (run_dir / BEST).exists() and (cfg.training.iterations == 0 or
                                          (last is not None and last["iteration"] >= cfg.training.iterations))
    if not done and (train_missing or cfg.training.iterations == 0):
        train(cfg, resume=last is not None, progress=False)
    elif done and saved is not None and saved.flat() != cfg.flat():
        cfg.save(run_dir / "config.yaml")
    if not (run_dir / BEST).exists():
        raise FileNotFoundError(f"{run_dir} holds no {BEST}: train it first")
    return run_dir


def record_evaluation_settings(run_dir: str | Path, **settings: object) -> Config:
    """Record in RUN_DIR/config.yaml how the run is to be tested (settings of ``EVALUATION_CHANGES``: a
    baseline's test-time step sizes that a benchmark chose on validation, say), so that ``load_run`` and
    ``fastadapt eval`` test it as the benchmark did; the updated config."""
    unknown = sorted(set(settings) - set(EVALUATION_CHANGES))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not settings of how a run is tested ({', '.join(EVALUATION_CHANGES)})")
    cfg = Config.load(Path(run_dir) / "config.yaml").replace(**settings)
    cfg.save(Path(run_dir) / "config.yaml")
    return cfg


def write_architecture(run_dir: str | Path) -> tuple[Config, ArchitectureLearning]:
    """Save the meta-architecture of a metanas / tnas run's best checkpoint as RUN_DIR/architecture.json;
    returns the run's config and best learner."""
    cfg, learner = load_run(run_dir, "best")
    if not method_of(cfg).searches_architecture:
        raise ValueError(f"{run_dir} is a {cfg.method.name} run, which searches no architecture")
    learner.architecture().save(Path(run_dir) / ARCHITECTURE_FILE)
    return cfg, learner


def threads_started_with(run_dir: Path) -> int | None:
    """The thread count the run's ``last.pt`` records (None for an older or unreadable checkpoint)."""
    try:
        return load_checkpoint(run_dir / LAST).get("threads")
    except (ValueError, FileNotFoundError):
        return None


class BuildContext:
    """What a method's ``build`` (its ``MethodSpec``) is given: the run's settings, its training tasks, and the
    networks those settings describe."""

    def __init__(self, cfg: Config, tasks: TaskDistribution) -> None:
        self.cfg, self.tasks = cfg, tasks

    def model(self, head: bool = True) -> nn.Module:
        """The network (an RL family's policy); with ``head`` it outputs what the tasks need."""
        return build_model(self.cfg, self.tasks, head)

    def encoder(self) -> tuple[nn.Module, int]:
        """The model without a head and the width of its features."""
        return build_encoder(self.cfg, self.tasks)

    @staticmethod
    def trained_learner(run_dir: str) -> nn.Module:
        """The best learner of the run in ``run_dir`` (k-NN borrows its encoder)."""
        return load_run(run_dir)[1]


def build_learner(cfg: Config, tasks: TaskDistribution) -> MetaLearner:
    """The run's learner, as its method's ``MethodSpec`` builds it from the resolved settings (seeded by the
    run's seed); here, beside ``load_run``, because a learner may be built from another run's (k-NN's
    ``encoder_from``)."""
    method = method_of(cfg)
    if method.images_only and getattr(tasks, "input_shape", None) is None:
        raise ValueError(f"algorithm {cfg.method.name!r} classifies images: use tasks 'omniglot' or 'folder', "
                         f"not {cfg.task.family!r}")
    torch.manual_seed(cfg.training.seed)
    return method.build(BuildContext(cfg.resolved(), tasks))


def initialise_from(learner: MetaLearner, run_dir: str | Path) -> None:
    """Load the best weights of the run in ``run_dir`` into ``learner`` (fine-tuning, a lower learning rate
    after a plateau, transfer to another dataset); it must be the same network."""
    path = Path(run_dir) / BEST
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist; give the directory of a finished or running run")
    payload = load_checkpoint(path)
    try:
        learner.load_state_dict(payload["learner"])
    except RuntimeError as error:
        source = Config.from_dict(payload["config"]).method.name
        raise ValueError(f"init_from: the weights in {path} ({source}) do not fit this {type(learner).__name__}: "
                         f"the networks differ. {str(error).splitlines()[0]}") from None


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[Config, MetaLearner]:
    """The config and trained learner of a run (``checkpoint`` is 'best' or 'last')."""
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    payload = load_checkpoint(run_dir / (BEST if checkpoint == "best" else LAST))
    cfg = Config.from_dict(payload["config"])
    if (run_dir / "config.yaml").exists():  # a resume may have changed how the run is tested since that checkpoint
        latest = Config.load(run_dir / "config.yaml").flat()
        cfg = cfg.replace(**{name: latest[name] for name in EVALUATION_CHANGES})
    # an MDP family is built in full (it reads no data); other tasks from the run's recorded signature
    tasks = build_tasks(cfg, "train") if family_of(cfg).kind == "mdp" else read_run_inputs(run_dir, cfg).signature
    learner = build_learner(cfg, tasks)
    learner.load_state_dict(payload["learner"])
    return cfg, learner.eval()  # ready for inference: batch norm uses its running statistics


def evaluate_learner(cfg: Config, learner: MetaLearner, num_tasks: int | None = None,
                     steps: list[int] | None = None, dataset: ClassDataset | None = None,
                     split: str = "test", progress: bool = False) -> dict[str, Estimate]:
    """Mean ± 95% CI on the fixed test tasks (or, with ``split`` "val", the validation tasks: for choices such
    as a baseline's test-time step size, which must never be made on the test tasks).

    Regression rows are numbers of adaptation steps; classification rows are
    the run's evaluation settings ("5-way 1-shot", ..., see ``eval_settings``),
    each over the same number of fixed test episodes with ``eval_query``
    queries per class, followed by the number of steps when those are swept. ``dataset``: the classes to
    draw test episodes from instead of the run's own test classes (cross-domain evaluation). It runs on the
    threads ``fastadapt train`` would choose for the run (one for a small network). ``progress``: a progress
    bar on stderr, tasks done and the expected time left.
    """
    num_tasks = num_tasks or cfg.evaluation.test_tasks
    tasks = build_tasks(cfg, split) if dataset is None else None
    episodic = dataset is not None or family_of(cfg).kind == "images"
    settings = eval_settings(cfg) if episodic else [None]
    if isinstance(tasks, WithinAlphabetEpisodes):
        settings.append(WITHIN_ALPHABET)
    bar = tqdm(total=num_tasks * len(settings), disable=not progress, unit="task", dynamic_ncols=True,
               desc=f"{'testing' if split == 'test' else 'validating'} on {num_tasks} fixed {split} tasks"
                    + (f" x {len(settings)} settings" if len(settings) > 1 else ""))
    with bar, using_threads(choose_threads(cfg, resolve_model(cfg))[0]):
        return _evaluate_learner(cfg, learner, num_tasks, steps, dataset, split, tasks, settings, bar.update)


def _evaluate_learner(cfg: Config, learner: MetaLearner, num_tasks: int, steps: list[int] | None,
                      dataset: ClassDataset | None, split: str, tasks: TaskDistribution | None,
                      settings: list, advance: Callable[[int], object]) -> dict[str, Estimate]:
    device = resolve_device(cfg.training.device)
    learner.to(device)
    steps = steps if steps is not None else cfg.evaluation.eval_steps
    seed = fixed_seed(cfg, split)
    if settings == [None]:
        results = evaluate(learner, fixed_batches(tasks, num_tasks, split, seed=seed), steps=steps, device=device,
                           precision=cfg.training.precision, advance=advance)
        return {row_label(learner.metric, key): e for key, e in results.items()}
    rows = {}
    for setting in settings:
        if setting == WITHIN_ALPHABET:  # the run's own trials (build_tasks)
            episodes, name = tasks, f"{WITHIN_ALPHABET} {tasks.n_way}-way {tasks.k_shot}-shot"
        else:
            way, shot = setting
            episodes = EpisodeTasks(tasks.dataset if dataset is None else dataset, way, shot,
                                    cfg.evaluation.eval_query)
            name = f"{way}-way {shot}-shot"
        batches = fixed_batches(episodes, num_tasks, split, shuffle_support=learner.reads_support_in_order,
                                 seed=seed)
        few = episodes.dataset.num_classes <= FEW_TEST_CLASSES
        results = evaluate(learner, batches, steps=steps, device=device, precision=cfg.training.precision,
                           advance=advance, classes=episodes.fixed_classes(num_tasks, split, seed) if few else None)
        for s, estimate in results.items():
            rows[name + ("" if s is None else f", {step_label(s)}")] = estimate
    return rows


def looks_at_test_set(run_dir: str | Path, test_set: int) -> int:
    """How many times test set ``test_set`` of the run in ``run_dir`` has been evaluated (``TEST_LOOKS``)."""
    path = Path(run_dir) / TEST_LOOKS
    if not path.exists():
        return 0
    counts = json.loads(path.read_text())
    return counts.get(str(test_set), counts.get("looks", 0) if test_set == 1 else 0)


def count_test_look(run_dir: str | Path, test_set: int) -> int:
    """Count one more evaluation of test set ``test_set`` in ``run_dir``/test_looks.json; the new count."""
    path = Path(run_dir) / TEST_LOOKS
    counts = json.loads(path.read_text()) if path.exists() else {}
    if "looks" in counts:  # the format before test sets were versioned
        counts = {"1": counts.pop("looks"), **counts}
    counts[str(test_set)] = counts.get(str(test_set), 0) + 1
    with atomic_file(path) as out:
        out.write((json.dumps(counts, sort_keys=True) + "\n").encode())
    return counts[str(test_set)]


def look_at_test_set(run_dir: str | Path, cfg: Config, learner: MetaLearner, steps: list[int] | None = None,
             progress: bool = False) -> dict[str, Estimate]:
    """``evaluate_learner`` on the run's test set (``evaluation.test_set``), the look counted first in
    RUN_DIR/test_looks.json: how ``fastadapt train`` and ``fastadapt eval`` test a run."""
    count_test_look(run_dir, cfg.evaluation.test_set)
    return evaluate_learner(cfg, learner, steps=steps, progress=progress)


def load_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a fastadapt run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def results_payload(run_dir: str | Path, checkpoint: str, cfg: Config, tasks: str,
                    results: dict[str, Estimate]) -> dict:
    """An evaluation as ``fastadapt eval --json`` writes it. On the run's own tasks it says which test set
    (``test_set``) and how many times that set of the run has been evaluated so far, this time included
    (``test_looks``): a figure is a clean test figure only at 1."""
    payload = {"run_dir": str(run_dir), "checkpoint": checkpoint, "config": cfg.to_dict(), "tasks": tasks}
    if tasks == cfg.task.family:
        payload.update(test_set=cfg.evaluation.test_set,
                       test_looks=looks_at_test_set(run_dir, cfg.evaluation.test_set))
    return {**payload, "results": {row: estimate.to_dict() for row, estimate in results.items()}}


def record_test_results(run_dir: str | Path, payload: dict) -> Path:
    """Write a run's own test evaluation to ``run_dir``/test_results.json, atomically, with the iteration of the
    best checkpoint it evaluated (so that a resume that changes nothing can show it again: ``recorded_results``)."""
    path = Path(run_dir) / TEST_RESULTS
    payload = {**payload, "best_iteration": load_checkpoint(Path(run_dir) / BEST)["iteration"]}
    with atomic_file(path) as out:
        out.write((json.dumps(payload, indent=2) + "\n").encode())
    return path


def read_test_results(run_dir: str | Path) -> dict | None:
    """The run's recorded test evaluation, or None when it has none (or an unreadable one)."""
    path = Path(run_dir) / TEST_RESULTS
    try:
        payload = json.loads(path.read_text())
        return payload if isinstance(payload, dict) and isinstance(payload.get("results"), dict) else None
    except (OSError, ValueError):
        return None


def recorded_results(run_dir: str | Path, cfg: Config) -> tuple[dict[str, Estimate] | None, str]:
    """The run's recorded test results when they still hold, that is when they were measured on the best
    checkpoint it has now with the evaluation settings of ``cfg``; else None. With why, in words."""
    payload = read_test_results(run_dir)
    if payload is None:
        return None, f"no readable {TEST_RESULTS}"
    if payload.get("best_iteration") != load_checkpoint(Path(run_dir) / BEST)["iteration"]:
        return None, f"{TEST_RESULTS} was measured on another best checkpoint"
    if payload.get("config") != json.loads(json.dumps(cfg.to_dict())) or payload.get("tasks") != cfg.task.family:
        return None, f"{TEST_RESULTS} was measured with other settings"
    try:
        return {row: Estimate(**estimate) for row, estimate in payload["results"].items()}, "unchanged"
    except TypeError:  # written by another version
        return None, f"{TEST_RESULTS} is in another format"


def episode_shapes(cfg: Config) -> tuple[str, str] | None:
    """A classification run's (training, validation) episodes in words, e.g. ("60-way 5-shot", "5-way 1-shot"):
    it validates on its first evaluation setting, not on its training episodes. None for other runs."""
    if family_of(cfg).kind != "images":
        return None
    train = ("minibatches of all training classes" if method_of(cfg).minibatch_trained
             else f"{cfg.task.n_way}-way {cfg.task.k_shot}-shot")
    if cfg.evaluation.episodes == WITHIN_ALPHABET:
        return train, f"{WITHIN_ALPHABET} {WITHIN_ALPHABET_WAY}-way 1-shot"
    way, shot = eval_settings(cfg)[0]
    return train, f"{way}-way {shot}-shot"


def curves_subtitle(cfg: Config) -> str | None:
    """What a run's learning curves need said: "train: 60-way 5-shot, val: 5-way 1-shot" when the training and
    validation curves come from episodes of other shapes (their accuracies are not comparable); else None."""
    shapes = episode_shapes(cfg)
    if shapes is None or shapes[0] == shapes[1]:
        return None
    return f"train: {shapes[0]}, val: {shapes[1]}"
