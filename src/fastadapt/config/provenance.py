"""Where a run's weights come from: its own training classes and the runs it started from (the settings declared
``weights_from``: ``init_from``, k-NN's ``encoder_from``, the prototype detector's ``base_from``), followed through
their ``config.yaml``, for the rules that depend on what a run has seen."""
from __future__ import annotations

from pathlib import Path

from fastadapt.config.families import family_of
from fastadapt.config.schema import FLAT, Config


def evaluation_alphabets_seen(cfg: Config, checked: frozenset[Path] = frozenset()) -> str | None:
    """Why a run's training may have seen Omniglot's evaluation-set alphabets (its classes, or weights it started
    from: the settings declared ``weights_from``), in words; None when it has not (``--dataset-split background``,
    whose training classes are the background set less the validation alphabets). ``checked``: the runs already
    looked at on the way here (a loop of init_from is not followed twice)."""
    if not family_of(cfg).alphabets:
        return f"this run was trained on {cfg.task.family!r} tasks, not on Omniglot's background set"
    if cfg.task.dataset_split != "background":
        return (f"this run's training classes (--dataset-split {cfg.task.dataset_split}) include evaluation-set "
                "alphabets; train with --dataset-split background")
    for started in (s for s in FLAT.values() if s.weights_from):
        source = getattr(getattr(cfg, started.section), started.name)
        if source is None:
            continue
        saved = (Path(source).expanduser() / "config.yaml").resolve()
        if saved in checked:
            continue
        if not saved.is_file():
            return f"its weights come from {source} ({started.name}), whose config.yaml is not there to check"
        why = evaluation_alphabets_seen(Config.load(saved), checked | {saved})
        if why:
            return f"its weights come from {source} ({started.name}), and there {why}"
    return None
