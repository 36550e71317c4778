"""Declared settings: each with its default, its help line and what its values must be, in one place.

A method's options are a frozen dataclass of ``setting`` fields next to its learner (``MethodSpec.options``);
the run configuration (``config.schema``) gathers them into its ``method`` section, so that a YAML file, a
command-line flag and the learner's own constructor are all checked by the same declaration. An options
dataclass checks its values when it is built; ``check_option`` checks one value, for a constructor that
takes it as an argument.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


class OptionError(ValueError):
    """A setting has an impossible value."""


@dataclass(frozen=True)
class Rule:
    """What a setting's value must be, in words ("must be positive"), and the test of one value (None, the
    "unset" of an optional setting, always passes; a list passes when every item does)."""

    words: str
    test: Callable[[Any], bool]

    def check(self, name: str, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(self.test(v) for v in values):
            raise OptionError(f"{name} {self.words}, got {value!r}")


POSITIVE_INT = Rule("must be a positive integer", lambda v: v >= 1)
POSITIVE_INTS = Rule("must hold positive integers", lambda v: v >= 1)
AT_LEAST_ONE = Rule("must be at least 1", lambda v: v >= 1)
POSITIVE_LR = Rule("must be a positive learning rate", lambda v: v > 0)
POSITIVE = Rule("must be positive", lambda v: v > 0)
NON_NEGATIVE = Rule("must be >= 0", lambda v: v >= 0)
UNIT_INTERVAL = Rule("must lie in [0, 1]", lambda v: 0 <= v <= 1)
OPEN_UNIT_INTERVAL = Rule("must lie in (0, 1)", lambda v: 0 < v < 1)
HALF_OPEN_UNIT_INTERVAL = Rule("must lie in (0, 1]", lambda v: 0 < v <= 1)


def one_of(*choices: str) -> Rule:
    return Rule(f"must be {' or '.join(choices)}", lambda v: v in choices)


def setting(default: Any = dataclasses.MISSING, help: str = "", flat: str | None = None,
            factory: Any = dataclasses.MISSING, resumable: bool | str = False, rule: Rule | None = None,
            weights_from: bool = False) -> Any:
    """A config field with its help line; ``flat`` is its command-line / flat name when not the field's own.
    ``resumable``: whether a resumed run may change it (it changes neither the weights the run trains nor its
    validation episodes); "evaluation" for those that say how a run is tested (a finished run is tested as the
    latest config.yaml says). ``rule``: what its values must be (``check_options``). ``weights_from``: its value
    is a run directory whose weights this run starts from, which ``config.provenance`` follows."""
    metadata = {"help": help, "flat": flat, "resumable": resumable, "rule": rule, "weights_from": weights_from}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_options(options: Any) -> None:
    """Every field of the dataclass ``options`` against its declared rule; an OptionError for the first that
    breaks it."""
    for f in dataclasses.fields(options):
        if f.metadata.get("rule") is not None:
            f.metadata["rule"].check(f.name, getattr(options, f.name))


def check_option(options: type, name: str, value: Any) -> None:
    """``value`` of the setting ``name`` of the options dataclass ``options`` against its declared rule."""
    rule = next(f for f in dataclasses.fields(options) if f.name == name).metadata.get("rule")
    if rule is not None:
        rule.check(name, value)


def options_of(options: type, values: Any) -> Any:
    """The options dataclass ``options`` with its fields read from ``values`` (a run's method settings), checked."""
    return options(**{f.name: getattr(values, f.name) for f in dataclasses.fields(options)})


def read_options(groups: tuple[type, ...], values: Any) -> dict[str, Any]:
    """{name: value} of every setting of the options dataclasses ``groups``, read from ``values``."""
    return {f.name: getattr(values, f.name) for group in groups for f in dataclasses.fields(group)}


class Options:
    """Base of an options dataclass: it checks its declared rules when built (subclasses add ``check`` for rules
    that join several settings)."""

    def __post_init__(self) -> None:
        check_options(self)
        self.check()

    def check(self) -> None:
        """Rules between settings; none by default."""
