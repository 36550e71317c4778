"""Figures: learning curves of a run, and the MAML paper's sinusoid adaptation figure."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

#: Panel titles of the logged metrics; the trainer logs training metrics under their plain names.
TITLES = {"loss": "training loss (meta-batch mean)", "accuracy": "training accuracy (query sets)",
          "val_accuracy": "validation accuracy (fixed episodes)", "val_mse": "validation MSE (fixed tasks)",
          "return": "training return (meta-batch mean; MAML: after its inner steps)",
          "val_return": "validation return (fixed tasks)"}

#: Characters per line of a learning-curve panel's title (4.5 inches wide at the default font size).
PANEL_TITLE_CHARACTERS = 38


def _iterations(value: float, _position: int) -> str:
    """Tick labels that stay short: 500, 2.5k, 10k, 1.2M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _finish(fig, path: Path, rect: tuple[float, float, float, float] | None = None, dpi: int = 110) -> Path:
    """Lay out, write and close a figure: every plot ends here."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_learning_curves(records: list[dict], path: Path, title: str = "", subtitle: str | None = None) -> Path:
    """Training loss (and accuracy) and validation metric against iteration, as a PNG. ``subtitle``: a second
    title line, e.g. that training and validation episodes differ ("train: 60-way 5-shot, val: 5-way 1-shot").
    Panel titles wrap to their panel's width rather than run off the figure's edge."""
    val_keys = sorted({k for r in records for k in r if k.startswith("val_")})
    training = "return" if any("return" in r for r in records) else "loss"  # RL runs log returns, not a loss
    panels = [training] + (["accuracy"] if any("accuracy" in r for r in records) else []) + val_keys
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        points = [(r["iteration"], r[key]) for r in records if key in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=4)
        ax.set_xlabel("meta-iteration")
        ax.set_title(textwrap.fill(TITLES.get(key, key.replace("_", " ")), PANEL_TITLE_CHARACTERS))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(_iterations))
        ax.grid(alpha=0.3)
        if key in ("loss", "val_mse") and points and min(ys) > 0:
            ax.set_yscale("log")
    fig.suptitle("\n".join(filter(None, [title, subtitle])))
    return _finish(fig, path)


def plot_sinusoid_adaptation(panels: list[dict], path: Path) -> Path:
    """The MAML paper's Figure 2: one row per test task, one column per learner, all on one y-scale.

    Each panel dict holds ``x`` (the plotting grid), ``truth``, ``support_x``, ``support_y``, ``title`` and
    ``curves``: {learner: {"0 steps" | "1 step" | ...: predictions on x}}.
    """
    learners = list(panels[0]["curves"])
    fig, axes = plt.subplots(len(panels), len(learners), figsize=(5.2 * len(learners), 3.0 * len(panels)),
                             squeeze=False, sharex=True, sharey=True)
    styles = {"0 steps": dict(ls="--", color="tab:green"), "1 step": dict(color="tab:orange"),
              "10 steps": dict(color="tab:blue")}
    for row, panel in zip(axes, panels):
        for ax, learner in zip(row, learners):
            ax.plot(panel["x"], panel["truth"], color="tab:red", lw=2, label="ground truth")
            for label, ys in panel["curves"][learner].items():
                name = "pre-update" if label == "0 steps" else f"after {label.replace('step', 'gradient step')}"
                ax.plot(panel["x"], ys, lw=1.5, label=name, **styles.get(label, {}))
            ax.scatter(panel["support_x"], panel["support_y"], color="black", marker="^", zorder=5,
                       label="the 10 points adapted on")
            ax.set_title(f"{learner}: {panel['title']}", fontsize=10)
            ax.set_xlim(panel["x"][0], panel["x"][-1])
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel("y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    return _finish(fig, path, rect=(0, 0.06, 1, 1))


def plot_navigation_trajectories(panels: list[dict], path: Path, title: str = "") -> Path:
    """Finn et al. 2017's Figure 4: for each test goal, a trajectory of the policy before adaptation and after
    1 and 3 policy-gradient steps, goal marked. Each panel dict holds ``goal`` (x, y), ``title`` and ``paths``:
    {"0 steps" | "1 step" | ...: positions (steps, 2) from the start}."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    styles = {0: dict(ls="--", color="tab:green"), 1: dict(color="tab:orange"), 3: dict(color="tab:blue")}
    for ax, panel in zip(axes[0], panels):
        for index, (label, positions) in enumerate(panel["paths"].items()):
            steps = int(label.split()[0])
            name = "pre-update" if steps == 0 else f"after {label.replace('step', 'gradient step')}"
            ax.plot(positions[:, 0], positions[:, 1], marker=".", markersize=3, lw=1.3, label=name,
                    **styles.get(steps, {}))
        ax.scatter([0], [0], color="black", marker="o", s=25, zorder=5, label="start")
        ax.scatter(*panel["goal"], color="tab:red", marker="*", s=160, zorder=6, label="goal")
        ax.set_title(panel["title"], fontsize=10)
        reach = max([0.6] + [float(abs(p).max()) + 0.05 for p in panel["paths"].values()])
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-reach, reach)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(title)
    return _finish(fig, path, rect=(0, 0.07, 1, 1))


def plot_adaptation_curves(curves: dict[str, dict[int, tuple[float, float]]], path: Path, title: str = "",
                           references: dict[str, dict[int, float]] | None = None) -> Path:
    """Finn et al. 2017's Figure 5: mean return against the number of policy-gradient steps at test time, one
    line per learner with its 95% CI as error bars. ``curves``: {learner: {steps: (mean, ci95)}};
    ``references``: {label: {steps: value}}, drawn dashed (a paper's numbers)."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for name, points in curves.items():
        steps = sorted(points)
        ax.errorbar(steps, [points[s][0] for s in steps], yerr=[points[s][1] for s in steps], marker="o",
                    capsize=3, lw=1.6, label=name)
    for name, points in (references or {}).items():
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], ls="--", marker="x", color="gray", label=name)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _finish(fig, path)


def plot_frame_strip(rows: list[dict], path: Path, title: str = "") -> Path:
    """Rows of rendered frames (``locomotion_frames``): each row a trajectory, each frame captioned with its step
    and the torso's x position, so the direction of travel shows although the camera follows the robot."""
    columns = max(len(row["frames"]) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 1.55 * len(rows) + 0.4), squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax, frame in zip(ax_row, row["frames"] + [None] * columns):
            ax.axis("off")
            if frame is not None:
                ax.imshow(frame["image"])
                ax.set_title(f"t={frame['t']}  x={frame['x']:+.1f} m", fontsize=7)
        ax_row[0].text(-0.05, 0.5, row["title"], transform=ax_row[0].transAxes, rotation=90, ha="right",
                       va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _finish(fig, path, dpi=100)


def plot_segmentations(examples: list[dict], path: Path, title: str = "") -> Path:
    """Each example (``segmentation_examples``) as a column: the reference above, the canvas below with the
    predicted mask in white, the true mask outlined in red and the predicted box in yellow, titled with its IoU."""
    fig, axes = plt.subplots(2, len(examples), figsize=(1.8 * len(examples), 2.9), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 2.2]})
    for column, example in enumerate(examples):
        reference, canvas = axes[0, column], axes[1, column]
        reference.imshow(example["reference"])
        reference.set_title("reference", fontsize=7)
        canvas.imshow(example["canvas"])
        overlay = np.zeros((*example["predicted"].shape, 4))
        overlay[example["predicted"]] = (1.0, 1.0, 1.0, 0.6)
        canvas.imshow(overlay)
        if example["mask"].any():
            canvas.contour(example["mask"], levels=[0.5], colors="red", linewidths=0.8)
        left, top, width, height = example["box"]
        canvas.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False, edgecolor="yellow",
                                   linewidth=0.8))
        canvas.set_title(f"mask IoU {example['iou']:.2f}", fontsize=7)
        reference.axis("off")
        canvas.axis("off")
    fig.suptitle(title, fontsize=8)
    return _finish(fig, path, dpi=110)


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
    return _finish(fig, path)


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
    return _finish(fig, path)
