"""Run configuration, grouped by concern: what a task is, the model, the method, the training loop, the
evaluation. Shipped presets (``config.presets``) are YAML files with one mapping per section; the command line
sets any setting with a flat flag (``--k-shot 5`` is ``task.k_shot``), as does ``Config(k_shot=5)`` in Python.

Everything a run needs to be rebuilt (and resumed) is in this object, and it is saved as
``config.yaml`` next to the run's checkpoints. Every value is type-checked when a config is built,
so a YAML file with ``meta_lr: 1e-3`` (which YAML reads as a string) is refused with the setting's name.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from fastadapt.algorithms.registry import methods, option_groups
from fastadapt.config.families import FAMILIES
from fastadapt.options import (NON_NEGATIVE, POSITIVE_INT, POSITIVE_INTS, POSITIVE_LR, OptionError, Rule,
                               check_options, options_of, setting)
from fastadapt.tasks.base import MAX_TEST_SET, TRAINING_SEEDS, fixed_stream_seeds


#: training.cuda_graph: whether the meta-step is captured in a CUDA graph (training.captured)
CUDA_GRAPH_SETTINGS = ("auto", "on", "off")
#: evaluation.episodes: the usual episodes only, or Lake et al.'s within-alphabet trials too
WITHIN_ALPHABET = "within-alphabet"
EPISODES = ("random", WITHIN_ALPHABET)


class ConfigError(ValueError):
    """A setting has the wrong type or an impossible value."""


@dataclass(frozen=True)
class TaskSettings:
    """What a task is: the task family and the shape of its episodes."""

    family: str = setting("sinusoid", "task family: sinusoid, omniglot, folder, or digits (scikit-learn's, for "
                                      "cross-domain evaluation); cluttered-omniglot (one-shot segmentation in "
                                      "clutter); cluttered-omniglot-detection (K-shot detection in clutter, our "
                                      "extension); reinforcement learning: nav2d (2D navigation), "
                                      "bandit (Bernoulli bandits), tabular-mdp, or the MuJoCo locomotion families "
                                      "halfcheetah-fwd-bwd, halfcheetah-vel, ant-fwd-bwd, ant-direction (need the "
                                      "fastadapt[mujoco] extra)", flat="tasks")
    k_shot: int = setting(10, "support examples per class (classification) or support points (regression)",
                          rule=POSITIVE_INT)
    num_query: int | None = setting(None, "query examples per class in training episodes "
                                          "(default: 15 for images, k_shot for sinusoid); detection: query "
                                          "canvases per episode, every split (default 4)", rule=POSITIVE_INT)
    n_way: int = setting(5, "classes per episode", rule=POSITIVE_INT)
    dataset_split: str = setting("maml", "Omniglot's class split: maml, vinyals or background")
    data_root: str | None = setting(None, "folder holding the data (Omniglot zips, or class sub-folders for "
                                          "tasks folder); default $FASTADAPT_DATA, else download")
    rotate_train_classes: bool = setting(False, "each training class also rotated by 90, 180 and 270 degrees, "
                                                "as three new classes")
    image_size: int = setting(28, "images are resized to image_size x image_size", rule=POSITIVE_INT)
    within_alphabet: bool = setting(False, "Omniglot: training episodes, too, take all their classes from one "
                                           "alphabet (a rotated alphabet is one of its own), support and query by "
                                           "different drawers, as Lake et al.'s trials do")
    augment: bool = setting(False, "every image of a training episode distorted by its own random affine map each "
                                   "time it is drawn (rotation ±10°, shear ±0.3, scale 0.8-1.2, shift ±2% of the "
                                   "size: Koch et al.'s ranges for Omniglot); validation and test images never are")
    channels: int | None = setting(None, "1 (grayscale) or 3 (RGB); default: as the images are")
    skip_unreadable: bool = setting(False, "tasks folder: leave out image files that cannot be read (listed on "
                                           "stderr) rather than stop with an error naming them")
    horizon: int | None = setting(None, "RL: steps per episode (default: 100 for nav2d, 10 for tabular-mdp, 200 for "
                                        "the MuJoCo families), or pulls per trial for bandit (n, default 100)",
                                  rule=POSITIVE_INT)
    trajectories: int = setting(20, "RL: trajectories sampled in each task before each adaptation step "
                                    "(MAML-RL), or trials per task in a meta-batch (RL^2)", rule=POSITIVE_INT)
    observe_goal: bool = setting(False, "nav2d: the observation holds the goal too (the oracle baseline)")
    balanced_directions: bool = setting(False, "halfcheetah-fwd-bwd, ant-fwd-bwd: each training meta-batch holds as "
                                               "many forward as backward tasks, in random order (each task is still "
                                               "forward or backward with probability 1/2); validation and test tasks "
                                               "are the same either way")
    characters: int = setting(4, "cluttered-omniglot: characters per canvas, the target and characters - 1 "
                                 "distractors (the paper's levels: 4, 8, 16, 32, 64, 128, 256); detection: "
                                 "drawings per canvas, its 0-3 instances included", rule=POSITIVE_INT)
    arms: int = setting(10, "bandit: arms per bandit (k)", rule=Rule("must be at least 2", lambda v: v >= 2))
    states: int = setting(10, "tabular-mdp: states", rule=POSITIVE_INT)
    actions: int = setting(5, "tabular-mdp: actions", rule=POSITIVE_INT)
    trial_episodes: int = setting(10, "tabular-mdp: episodes per trial (n; RL^2 keeps its memory across them)",
                                  rule=POSITIVE_INT)

    def validate(self) -> None:
        check_options(self)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"config: channels must be 1 (grayscale), 3 (RGB) or null (as the data is), "
                              f"got {self.channels!r}")


@dataclass(frozen=True)
class ModelSettings:
    """The network the method adapts or embeds with."""

    name: str = setting("auto", "network: mlp, conv4, pixels (no network) or auto (mlp for sinusoid, "
                                "conv4 for images)", flat="model")
    hidden_sizes: list[int] = setting(help="hidden layer widths of the MLP", factory=lambda: [40, 40],
                                      rule=POSITIVE_INTS)
    conv_channels: int = setting(64, "channels of every Conv-4 block", rule=POSITIVE_INT)
    norm: str = setting("auto", "normalisation: transductive, batch, layer, or auto (transductive for "
                                "gradient-based methods, batch for the rest)")
    pooling: str = setting("max", "how Conv-4 downsamples: max (2x2 max-pooling after each block) or stride "
                                  "(stride-2 convolutions, the MAML paper's Omniglot network)")
    policy: str = setting("auto", "RL policy: gaussian, categorical (MLPs of hidden_sizes) or gru (RL^2's); auto: "
                                  "gru for rl2, else gaussian for continuous actions and categorical for discrete")
    recurrent_size: int = setting(256, "RL^2: hidden units of the GRU policy", rule=POSITIVE_INT)

    # DARTS networks: the supernet that metanas / tnas search, and model 'darts', the discrete network of a genotype
    cells: int = setting(3, "DARTS networks: cells (normal and reduction) between stem and head", rule=POSITIVE_INT)
    nodes: int = setting(3, "DARTS networks: intermediate nodes per cell", rule=POSITIVE_INT)
    cell_channels: int = setting(8, "DARTS networks: channels per node in the first cells (doubled by each "
                                    "reduction cell)", rule=POSITIVE_INT)
    stem_multiplier: int = setting(3, "DARTS networks: the stem convolution has stem_multiplier x cell_channels "
                                      "channels", rule=POSITIVE_INT)
    operations: list[str] = setting(
        help="DARTS search space: candidate operations on every edge (sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, "
             "conv_3x3, max_pool_3x3, avg_pool_3x3, skip_connect, zero)",
        factory=lambda: ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "conv_3x3", "max_pool_3x3",
                         "avg_pool_3x3", "skip_connect", "zero"])
    reduction_cells: list[int] | None = setting(None, "DARTS networks: indices of the reduction cells "
                                                      "(default: at 1/3 and 2/3 of the cells, as DARTS)")
    architecture: str | None = setting(None, "model darts: a genotype JSON file, or the directory of a metanas / "
                                             "tnas run (its architecture.json)")

    def validate(self) -> None:
        check_options(self)


def _method_settings() -> type:
    """The ``method`` section: the method's name, then the settings of every method's options dataclasses
    (``MethodSpec.options``, declared next to each learner), flat as YAML files and flags have always held them.
    Its ``validate`` builds each options dataclass from them, which checks them by their declared rules."""
    groups = option_groups()
    declared = [("name", str, setting("maml", "meta-learning method (see `fastadapt presets` and the README)",
                                      flat="algorithm"))]
    for group in groups:
        hints = typing.get_type_hints(group)
        for f in dataclasses.fields(group):
            if any(f.name == name for name, _, _ in declared):
                raise AssertionError(f"method setting {f.name!r} is declared twice (again by {group.__name__})")
            declared.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory,
                                                          metadata=f.metadata)))

    def validate(self) -> None:
        for group in groups:
            options_of(group, self)

    return dataclasses.make_dataclass("MethodSettings", declared, frozen=True, namespace={
        "validate": validate, "__doc__": "How to learn: the meta-learning method and its own options.",
        "__module__": __name__})


MethodSettings = _method_settings()


@dataclass(frozen=True)
class TrainingSettings:
    """The outer loop and the run's bookkeeping."""

    iterations: int = setting(10_000, "meta-training iterations (meta-batches)", resumable=True, rule=NON_NEGATIVE)
    meta_batch_size: int | None = setting(None, "tasks per meta-batch (default: 25 for regression, as in the "
                                                "MAML paper; 4 episodes for image classification)", rule=POSITIVE_INT)
    meta_lr: float = setting(1e-3, "learning rate beta of the outer optimizer", rule=POSITIVE_LR)
    alpha_meta_lr: float | None = setting(None, "metanas / tnas: outer learning rate of the architecture weights "
                                                "(default: meta_lr)", rule=POSITIVE_LR)
    meta_optimizer: str = setting("adam", "outer optimizer: adam or sgd")
    lr_decay_every: int = setting(0, "multiply the outer learning rate by lr_decay every this many iterations "
                                     "(0: never)", rule=NON_NEGATIVE)
    lr_decay: float = setting(0.5, "factor of each learning-rate decay")
    init_from: str | None = setting(None, "a run directory: start from its best weights, with a fresh optimizer",
                                    weights_from=True)
    seed: int = setting(0, "seed of every random stream of the run")
    device: str = setting("auto", "cpu, cuda, cuda:N, or auto (cuda when available)", resumable=True)
    output_dir: str = setting("runs/latest", "the run directory", resumable=True)
    log_every: int | None = setting(None, "log training metrics every this many iterations "
                                          "(default: 1% of the iterations, at most 100)", resumable=True,
                                    rule=POSITIVE_INT)
    val_every: int | None = setting(None, "validate (and keep the best checkpoint) every this many iterations "
                                          "(default: 5% of the iterations, at most 1000)", resumable=True,
                                    rule=POSITIVE_INT)
    val_tasks: int = setting(200, "fixed validation tasks", rule=POSITIVE_INT)
    checkpoint_every: int = setting(1000, "write last.pt every this many iterations", resumable=True, rule=POSITIVE_INT)
    tensorboard: bool = setting(False, "also write every metrics.jsonl scalar as TensorBoard events in "
                                       "RUN_DIR/tensorboard (needs the tensorboard package)", resumable=True)
    threads: int | None = setting(None, "CPU threads (default: 1 for a small network such as the sinusoid MLP, "
                                        "else the cores that are idle when the run starts)", resumable=True,
                                  rule=POSITIVE_INT)
    rollout_workers: int | None = setting(None, "MuJoCo families: processes that step the environments (0: this "
                                                "process; default: one per available core); the trajectories are "
                                                "the same for any number", resumable=True, rule=NON_NEGATIVE)

    precision: str = setting("fp32", "fp32, or bf16: mixed precision (autocast) for the forward passes and the "
                                     "inner loop, fp32 weights, optimizer state and losses")
    tasks_per_pass: int | None = setting(None, "memory-saving mode: run each meta-batch through forward and "
                                               "backward in chunks of this many tasks, gradients accumulated; "
                                               "null: all tasks at once", rule=POSITIVE_INT)
    cuda_graph: str = setting("auto", "auto: on a CUDA GPU, capture the whole meta-step of MAML-family methods "
                                      "in one CUDA graph (much faster; the same tasks and math); on: the same, "
                                      "saying why not where it cannot; off: always the eager step", resumable=True)

    def validate(self) -> None:
        check_options(self)
        if not 0 <= self.seed < TRAINING_SEEDS:
            raise ConfigError(f"config: seed must lie in [0, {TRAINING_SEEDS}) (test sets from 2 on are drawn from the "
                              f"seeds above), got {self.seed}")
        for stream, seed in fixed_stream_seeds().items():
            if self.seed == seed:
                raise ConfigError(f"config: seed {seed} starts the stream the {stream} tasks are drawn from: training "
                                  "on it would train on them; choose another seed")
        if self.cuda_graph not in CUDA_GRAPH_SETTINGS:
            raise ConfigError(f"config: cuda_graph must be one of {CUDA_GRAPH_SETTINGS}, got {self.cuda_graph!r}")


@dataclass(frozen=True)
class EvaluationSettings:
    """The fixed test tasks a finished run is scored on (mean ± 95% CI)."""

    test_tasks: int = setting(1000, "fixed test tasks (episodes)", resumable="evaluation", rule=POSITIVE_INT)
    eval_steps: list[int] = setting(help="adaptation steps to report (gradient-based methods)",
                                    factory=lambda: [0, 1, 10], resumable="evaluation", rule=NON_NEGATIVE)
    eval_shots: list[int] = setting(help="shots to evaluate at (default: k_shot)", factory=list, rule=POSITIVE_INTS)
    eval_ways: list[int] = setting(help="ways to evaluate at (default: n_way)", factory=list, rule=POSITIVE_INTS)
    eval_query: int = setting(15, "query examples per class in evaluation episodes", rule=POSITIVE_INT)
    test_set: int = setting(1, "which draw of the test tasks: 1, the draw of every figure before test sets were "
                               "versioned; N >= 2, a fresh seed stream (for a test set looked at more than once)",
                               resumable="evaluation")
    episodes: str = setting("random", "Omniglot: random (the classes of an episode from anywhere) or within-alphabet: "
                                      "also Lake et al.'s within-alphabet 20-way 1-shot trials (one alphabet per "
                                      "episode, support and query by different drawers; for runs trained on the "
                                      "background split only), which then choose the best checkpoint")

    def validate(self) -> None:
        check_options(self)
        if not 1 <= self.test_set <= MAX_TEST_SET:
            raise ConfigError(f"config: test_set must lie in [1, {MAX_TEST_SET}], got {self.test_set}")
        if self.episodes not in EPISODES:
            raise ConfigError(f"config: episodes must be one of {', '.join(EPISODES)}, got {self.episodes!r}")


SECTIONS: dict[str, type] = {
    "task": TaskSettings,
    "model": ModelSettings,
    "method": MethodSettings,
    "training": TrainingSettings,
    "evaluation": EvaluationSettings,
}


@dataclass(frozen=True)
class Setting:
    """Where one setting lives: section, field, flat name (the command-line flag without --), help, type."""

    section: str
    name: str
    flat: str
    help: str
    hint: Any
    default: Any
    #: True or "evaluation": a resumed run may change it (see ``setting``)
    resumable: bool | str = False
    #: its value is a run directory whose weights the run starts from (see ``setting``)
    weights_from: bool = False


def settings() -> Iterator[Setting]:
    """Every setting of every section, in declaration order."""
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield Setting(section, f.name, f.metadata.get("flat") or f.name, f.metadata.get("help", ""),
                          hints[f.name], default, f.metadata.get("resumable", False),
                          f.metadata.get("weights_from", False))


FLAT: dict[str, Setting] = {}
for _s in settings():
    if _s.flat in FLAT:
        raise AssertionError(f"config setting name {_s.flat!r} is not unique")
    FLAT[_s.flat] = _s


def _describe(hint: Any) -> str:
    optional = type(None) in typing.get_args(hint)
    base = base_type(hint)
    if typing.get_origin(base) is list:
        text = f"a list of {typing.get_args(base)[0].__name__}"
    else:
        text = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[base]
    return text + (" or null" if optional else "")


def base_type(hint: Any) -> Any:
    """``int | None`` -> int; other hints as they are."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _checked(s: Setting, value: Any) -> Any:
    """``value`` as the setting's type (an int is a valid float), or a ConfigError naming the setting."""
    if value is None and type(None) in typing.get_args(s.hint):
        return None
    base = base_type(s.hint)
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        converted = [_scalar(item, v) for v in value] if isinstance(value, (list, tuple)) else _BAD
        ok = converted is not _BAD and _BAD not in converted
    else:
        converted = _scalar(base, value)
        ok = converted is not _BAD
    if ok:
        return converted
    strings = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, (list, tuple)) else []
    hint = ""
    if any(_looks_numeric(v) for v in strings):
        hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
    raise ConfigError(f"config: {s.section}.{s.name} (--{s.flat.replace('_', '-')}) must be "
                      f"{_describe(s.hint)}, got {value!r}{hint}")


_BAD = object()


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scalar(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` where that loses nothing (int -> float), else _BAD; a bool is no number."""
    if kind is bool:
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):
        return _BAD
    if kind is int:
        return value if isinstance(value, int) else _BAD
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else _BAD
    if kind is str:
        return value if isinstance(value, str) else _BAD
    return _BAD


class Config:
    """All settings of a run, as five sections: ``task``, ``model``, ``method``, ``training``, ``evaluation``.

    Build it from sections, from flat settings, or both::

        Config(algorithm="protonet", tasks="omniglot", k_shot=5)        # flat names, as the CLI flags
        Config(task=TaskSettings(family="omniglot"), method=MethodSettings(name="protonet"))
    """

    task: TaskSettings
    model: ModelSettings
    method: MethodSettings
    training: TrainingSettings
    evaluation: EvaluationSettings

    def __init__(self, **values: Any) -> None:
        nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in values.items():
            if _is_section(key, value):
                if isinstance(value, SECTIONS[key]):
                    value = dataclasses.asdict(value)
                if not isinstance(value, dict):
                    raise ConfigError(f"config: section {key!r} must be a mapping of settings, got {value!r}")
                for name, item in value.items():
                    nested[key][self._field_of(key, name)] = item
            elif key in FLAT:
                nested[FLAT[key].section][FLAT[key].name] = value
            else:
                close = difflib.get_close_matches(key, FLAT, n=1)
                raise ConfigError(f"config: unknown option {key!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else "")
                                  + f"; known options are {sorted(FLAT)}, or the sections {list(SECTIONS)}")
        for name, cls in SECTIONS.items():
            section = cls(**{key: _checked(_by_field[name, key], value) for key, value in nested[name].items()})
            try:  # each setting's rule (fastadapt.options), then the section's rules between settings
                section.validate()
            except OptionError as error:
                raise ConfigError(f"config: {error}") from None
            object.__setattr__(self, name, section)

    @staticmethod
    def _field_of(section: str, name: str) -> str:
        if (section, name) in _by_field:
            return name
        known = sorted(f for s, f in _by_field if s == section)
        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"config: unknown option {section}.{name}"
                          + (f" (did you mean {close[0]!r}?)" if close else "") + f"; {section} has {known}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is read-only: use cfg.replace(name=value) for a changed copy")

    def resolved(self) -> "Config":
        """This config with every setting left to its default ('None: ...' above) given its value for this run:
        the task family's and the method's (``FamilySpec.meta_batch``, ``MethodSpec.defaults``) among them."""
        training = self.training
        iterations = training.iterations
        return self.replace(
            meta_batch_size=training.meta_batch_size or _default_meta_batch(self.task.family),
            log_every=training.log_every or min(100, max(1, iterations // 100)),
            val_every=training.val_every or min(1000, max(1, iterations // 20)),
            method=self._method_defaults(),
        )

    def _method_defaults(self) -> dict[str, Any]:
        """The method's values of its settings this config leaves unset (none for a name no method has, refused
        later)."""
        spec = methods().get(self.method.name)
        defaults = spec.defaults if spec is not None else {}
        return {name: value for name, value in defaults.items() if getattr(self.method, name) is None}

    # --- views and copies ---
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested: {section: {setting: value}}, as config.yaml holds it."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def flat(self) -> dict[str, Any]:
        """{flat name: value} for every setting, the names the command line uses."""
        return {s.flat: getattr(getattr(self, s.section), s.name) for s in FLAT.values()}

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` (flat names, or whole sections) applied."""
        values: dict[str, Any] = self.to_dict()
        for key, value in changes.items():
            if _is_section(key, value):
                if isinstance(value, SECTIONS[key]):
                    value = dataclasses.asdict(value)
                values[key] = {**values[key], **value} if isinstance(value, dict) else value
            elif key in FLAT:
                values[FLAT[key].section] = {**values[FLAT[key].section], FLAT[key].name: value}
            else:
                values[key] = value  # refused, with the list of known settings, by the constructor
        return Config(**values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in SECTIONS) + ")"

    # --- (de)serialisation ---
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """From the nested form, or the flat one that config.yaml files and checkpoints before 0.2 hold."""
        if not isinstance(values, dict):
            raise ConfigError(f"config: expected a mapping of settings, got {type(values).__name__}")
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "Config":
        try:
            values = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"config: {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        try:
            return cls.from_dict(values or {})
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None


def _default_meta_batch(family: str) -> int:
    """The family's meta-batch size (its ``FamilySpec``; 4 for a name no family has, refused later)."""
    return FAMILIES[family].meta_batch if family in FAMILIES else 4


def _is_section(key: str, value: Any) -> bool:
    """Whether ``key=value`` sets a whole section; ``model="conv4"`` is the flat setting model.name."""
    if key not in SECTIONS:
        return False
    return key not in FLAT or isinstance(value, (dict, SECTIONS[key]))


_by_field: dict[tuple[str, str], Setting] = {(s.section, s.name): s for s in FLAT.values()}

