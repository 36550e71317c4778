"""Figures: learning curves of a run, and the MAML paper's sinusoid adaptation figure."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


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


def plot_cells(genotype, path: Path, title: str = "") -> Path:
    """The cells of a DARTS genotype as graphs: the two inputs c_{k-2} and c_{k-1}, the nodes, the output c_k
    (the concatenation of the nodes); every edge labelled with its operation."""
    cell_types = [t for t in ("normal", "reduce") if genotype.cells(t)]
    fig, axes = plt.subplots(1, len(cell_types), figsize=(6.5 * len(cell_types), 4.2), squeeze=False)
    for ax, cell_type in zip(axes[0], cell_types):
        nodes = genotype.cells(cell_type)
        positions = {0: (0.0, 1.0), 1: (0.0, -1.0)}
        for j in range(len(nodes)):
            positions[2 + j] = (1.0 + j, 1.2 if j % 2 == 0 else -1.2)
        output = (len(nodes) + 1.0, 0.0)
        labels = {0: "c$_{k-2}$", 1: "c$_{k-1}$", **{2 + j: str(j) for j in range(len(nodes))}}

        def draw_edge(start, end, text="", style="-"):
            ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", linestyle=style, lw=1.2,
                                                                  shrinkA=14, shrinkB=14, color="0.3"))
            if text:  # a third of the way from the source: edges into one node converge, their labels would meet
                x, y = start[0] + (end[0] - start[0]) / 3, start[1] + (end[1] - start[1]) / 3
                ax.text(x, y, text, fontsize=7, ha="center", va="center",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))

        for j, node in enumerate(nodes):
            for op, source in node:
                draw_edge(positions[source], positions[2 + j], op)
            draw_edge(positions[2 + j], output, style="--")
        for state, (x, y) in positions.items():
            colour = "tab:green" if state < 2 else "tab:blue"
            ax.scatter([x], [y], s=700, color=colour, alpha=0.25, zorder=3)
            ax.text(x, y, labels[state], ha="center", va="center", fontsize=9, zorder=4)
        ax.scatter([output[0]], [output[1]], s=700, color="tab:orange", alpha=0.25, zorder=3)
        ax.text(*output, "c$_k$", ha="center", va="center", fontsize=9, zorder=4)
        ax.set_title(f"{cell_type} cell")
        ax.set_xlim(-0.6, output[0] + 0.6)
        ax.set_ylim(-1.8, 1.8)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_task_architectures(meta, per_task: list, operations: list[str], path: Path, title: str = "") -> Path:
    """How much the architecture changes per task: how many of each task's edge choices (source and operation)
    differ from the meta-architecture's, and, per cell type, how often each operation was chosen on each edge
    (the meta-architecture's choices ringed)."""
    cell_types = [t for t in ("normal", "reduce") if meta.cells(t)]
    fig, axes = plt.subplots(1, 1 + len(cell_types), figsize=(4.5 + 4.0 * len(cell_types), 4.2), squeeze=False)
    meta_edges = {(t, j, edge) for t in cell_types for j, node in enumerate(meta.cells(t)) for edge in node}
    changed = [sum((t, j, edge) not in meta_edges for t in cell_types for j, node in enumerate(g.cells(t))
                   for edge in node) for g in per_task]
    total = len(meta_edges)
    ax = axes[0][0]
    ax.hist(changed, bins=[b - 0.5 for b in range(total + 2)], color="tab:blue", alpha=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"edges differing from the meta-architecture (of {total})")
    ax.set_ylabel("tasks")
    ax.set_title(f"{len(per_task)} tasks: {sum(c > 0 for c in changed)} with their own architecture")
    for ax, cell_type in zip(axes[0][1:], cell_types):
        nodes = len(meta.cells(cell_type))
        rows = [(j, s) for j in range(nodes) for s in range(2 + j)]
        counts = [[0] * len(operations) for _ in rows]
        for g in per_task:
            for j, node in enumerate(g.cells(cell_type)):
                for op, source in node:
                    counts[rows.index((j, source))][operations.index(op)] += 1
        image = ax.imshow([[c / len(per_task) for c in row] for row in counts], cmap="Blues", vmin=0, vmax=1,
                          aspect="auto")
        for j, node in enumerate(meta.cells(cell_type)):
            for op, source in node:
                ax.scatter(operations.index(op), rows.index((j, source)), s=120, facecolors="none",
                           edgecolors="tab:red", lw=1.5)
        ax.set_xticks(range(len(operations)), operations, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{s} -> node {j}" for j, s in rows], fontsize=7)
        ax.set_title(f"{cell_type} cell: share of tasks per edge and operation", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
