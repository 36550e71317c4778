"""Optional dependencies: what to install for a feature that needs one, said in one line."""
from __future__ import annotations

import importlib.util

#: the extra that brings MuJoCo (gymnasium[mujoco]) for the locomotion task families
MUJOCO_EXTRA = "fastadapt[mujoco]"


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message says what to install."""


def require_mujoco(what: str) -> None:
    """Raise ``MissingExtraError`` naming ``what`` if MuJoCo cannot be imported."""
    try:
        found = importlib.util.find_spec("mujoco") is not None
    except ImportError:  # an import hook that refuses it
        found = False
    if not found:
        raise MissingExtraError(f"{what} needs MuJoCo, which is not installed: pip install \"{MUJOCO_EXTRA}\"")
