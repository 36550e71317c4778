"""Every method, from the ``SPECS`` of its file under algorithms/: one registration line per file."""
from __future__ import annotations

import importlib
from functools import lru_cache

from fastadapt.algorithms.spec import MethodSpec

#: The method files, in the order ``fastadapt`` lists their methods.
MODULES = (
    "maml",
    "anil",
    "metasgd",
    "reptile",
    "pretrained",
    "metanas",
    "tnas",
    "protonet",
    "matching",
    "knn",
    "mann",
    "snail",
    "metanet",
    "baseline",
    "baseline_pp",
    "logreg",
    "maml_rl",
    "metasgd_rl",
    "pretrained_rl",
    "rl2",
    "bandit_baselines",
    "siamese_unet",
    "siamese_unet_anil",
    "segmentation_baselines",
    "instance_protonet",
    "detection_baselines",
    "prototype_detector",
    "transfer_detector",
    "prototype_detector_anil",
)


@lru_cache(maxsize=1)
def methods() -> dict[str, MethodSpec]:
    """{name: specification} of every registered method."""
    specs: dict[str, MethodSpec] = {}
    for module in MODULES:
        for spec in importlib.import_module(f"fastadapt.algorithms.{module}").SPECS:
            if spec.name in specs:
                raise AssertionError(f"method name {spec.name!r} is registered twice")
            specs[spec.name] = spec
    return specs


def option_groups() -> list[type]:
    """Every method's options dataclasses, each once, in the order the methods list them."""
    return list(dict.fromkeys(group for spec in methods().values() for group in spec.options))


def method_spec(name: str) -> MethodSpec:
    """The specification of method ``name``; an unknown name is a ValueError listing the known ones."""
    known = methods()
    if name not in known:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(known)}")
    return known[name]


def method_names(**traits: object) -> list[str]:
    """The sorted names of the methods whose specifications have every trait given (``rl=True``, ...)."""
    return sorted(name for name, spec in methods().items()
                  if all(getattr(spec, trait) == value for trait, value in traits.items()))


def method_of(cfg) -> MethodSpec:
    """The specification of a run's method (``cfg.method.name``)."""
    return method_spec(cfg.method.name)
