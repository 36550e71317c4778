"""The shipped presets: one YAML file per preset in this package (``fastadapt presets`` lists them, with
``timings.json``'s measured time per iteration), and how a preset or any YAML file becomes a ``Config``."""
from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from fastadapt.config.schema import Config, ConfigError


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> Config:
    """A shipped preset by name (see ``preset_names()``) or any YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        return Config.load(path)
    if name_or_path not in preset_names():
        close = difflib.get_close_matches(name_or_path, preset_names(), n=1)
        raise ConfigError(f"unknown preset {name_or_path!r}" + (f": did you mean {close[0]!r}?" if close else "")
                          + " (`fastadapt presets` lists them; or give a .yaml path)")
    with resources.as_file(resources.files(__name__).joinpath(f"{name_or_path}.yaml")) as preset:
        return Config.load(preset)
