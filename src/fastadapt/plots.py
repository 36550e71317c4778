"""Figures: learning curves of a run, and the MAML paper's sinusoid adaptation figure."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curves(records: list[dict], path: Path, title: str = "") -> Path:
    """Training loss (and accuracy) and validation metric against iteration, as a PNG."""
    val_keys = sorted({k for r in records for k in r if k.startswith("val_")})
    panels = ["loss"] + (["accuracy"] if any("accuracy" in r for r in records) else []) + val_keys
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        points = [(r["iteration"], r[key]) for r in records if key in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_xlabel("meta-iteration")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        if key in ("loss", "val_mse") and points and min(ys) > 0:
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_sinusoid_adaptation(panels: list[dict], path: Path) -> Path:
    """One panel per test task: ground truth, support points and the model after 0, 1 and 10 steps.

    Each dict holds ``x`` (the plotting grid), ``truth``, ``support_x``, ``support_y``,
    ``title`` and ``curves``: {label: predictions on x}.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    styles = ["--", "-", "-", "-"]
    for ax, panel in zip(axes[0], panels):
        ax.plot(panel["x"], panel["truth"], color="tab:red", lw=2, label="ground truth")
        for style, (label, ys) in zip(styles, panel["curves"].items()):
            ax.plot(panel["x"], ys, style, lw=1.5, label=label)
        ax.scatter(panel["support_x"], panel["support_y"], color="black", marker="^", zorder=5,
                   label="support points")
        ax.set_title(panel["title"])
        ax.set_xlim(panel["x"][0], panel["x"][-1])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
