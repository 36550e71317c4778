"""What a trained run does, for figures and reports: a 2D-navigation policy's trajectories, a MuJoCo policy's
frames, a segmenter's masks on canvases, the architecture each task adapts a searched network to, and a genotype's size.

Kept apart from ``runs`` (which trains, loads and evaluates runs): these read a trained learner and build
what ``fastadapt plot`` draws.
"""
from __future__ import annotations

import os

import gymnasium
import torch

from fastadapt.algorithms.architecture import ArchitectureLearning
from fastadapt.algorithms.base import RLMetaLearner
from fastadapt.algorithms.metrics import MASK_LOGIT_THRESHOLD, at_least_fp32
from fastadapt.algorithms.segmentation import SegmentationLearner
from fastadapt.config.families import family_of
from fastadapt.config.schema import Config
from fastadapt.environments.noise import derive_seeds
from fastadapt.models.darts import DiscreteNetwork, Genotype, count_flops, count_parameters
from fastadapt.rl.rollout import ENV_STREAM
from fastadapt.runs.directory import fixed_batches
from fastadapt.tasks.cluttered_omniglot import mask_iou
from fastadapt.tasks.mdp import LOCOMOTION_FAMILIES, LocomotionTasks
from fastadapt.training.builders import build_tasks, fixed_seed
from fastadapt.training.evaluation import step_label
from fastadapt.training.networks import search_space

#: how a figure names the fixed tasks it shows
SPLIT_NAMES = {"test": "test", "val": "validation"}


@torch.no_grad()
def task_architectures(cfg: Config, learner: ArchitectureLearning, num_tasks: int) -> list[Genotype]:
    """The architecture each of ``num_tasks`` fixed *validation* tasks adapts the meta-architecture to."""
    learner.eval()
    genotypes = []
    for batch in fixed_batches(build_tasks(cfg, "val"), num_tasks, "val"):
        genotypes += learner.task_architectures(learner.adapt(batch.support_x, batch.support_y))
    return genotypes


def architecture_size(cfg: Config, genotype: Genotype) -> tuple[int, int]:
    """Parameters and FLOPs per image of the discrete network of ``genotype`` built with ``cfg``'s model settings
    for its tasks (``count_flops``: 2 per multiply-accumulate of convolutions and linear layers)."""
    tasks = build_tasks(cfg, "test")
    network = DiscreteNetwork(genotype, search_space(cfg), tasks.input_shape[0], tasks.output_size)
    return count_parameters(network), count_flops(network, tasks.input_shape)


def navigation_paths(cfg: Config, learner: RLMetaLearner, goals: int = 3, steps: tuple[int, ...] = (0, 1, 3),
                     split: str = "test") -> list[dict]:
    """For the first ``goals`` fixed goals of ``split`` of a 2D-navigation run: one trajectory (the first sampled, up to
    its end) before adaptation and after each number of ``steps``, as ``plots.plot_navigation_trajectories``
    draws them (Finn et al.'s Figure 4)."""
    if "trajectories" not in family_of(cfg).plots or not learner.uses_adaptation_steps:
        raise ValueError(f"trajectory figures are for 2D-navigation runs of maml-rl / metasgd-rl / pretrained-rl, not "
                         f"{cfg.method.name} on {cfg.task.family}")
    tasks = build_tasks(cfg, split).fixed_tasks(goals, split=split, seed=fixed_seed(cfg, split))
    _, history = learner.adapt(tasks, max(steps))
    panels = []
    for task in range(goals):
        paths = {}
        for step in steps:
            episodes = history[step]
            length = int(episodes.masks[task, 0].sum())
            positions = torch.cat([torch.zeros(1, 2), episodes.observations[task, 0, 1:length, :2]])
            paths[step_label(step)] = positions.numpy()
        goal = tasks.env.goals[task].tolist()
        panels.append({"goal": goal, "paths": paths,
                       "title": f"{SPLIT_NAMES[split]} goal ({goal[0]:.2f}, {goal[1]:.2f})"})
    return panels


def locomotion_frames(cfg: Config, learner: RLMetaLearner, steps: tuple[int, ...] = (0, 1), every: int = 20,
                      split: str = "test", size: tuple[int, int] = (240, 160)) -> list[dict]:
    """Frames of the adapted robot for a strip: for two fixed test tasks (for a direction family, the first forward
    and the first backward one), the first trajectory sampled before adaptation and after each number of
    ``steps``, one frame every ``every`` steps. The trajectory is replayed in a rendering copy of the environment
    with its seed and recorded actions, which gives the same states. Rendering runs headless through MuJoCo's
    EGL backend unless MUJOCO_GL says otherwise."""
    distribution = build_tasks(cfg, split)
    if not isinstance(distribution, LocomotionTasks) or not learner.uses_adaptation_steps:
        raise ValueError(f"frames are for MuJoCo runs of maml-rl / metasgd-rl / pretrained-rl, not "
                         f"{cfg.method.name} on {cfg.task.family}")
    tasks = distribution.fixed_tasks(cfg.evaluation.test_tasks if split == "test" else cfg.training.val_tasks,
                                     split=split, seed=fixed_seed(cfg, split))
    goals = tasks.env.tasks
    if LOCOMOTION_FAMILIES[cfg.task.family].goal == "sign" and len(set(goals[:, 0].tolist())) == 2:
        chosen = [int((goals[:, 0] == 1).nonzero()[0]), int((goals[:, 0] == -1).nonzero()[0])]
    else:
        chosen = [0, min(1, len(goals) - 1)]
    shown = tasks[torch.tensor(chosen)]
    _, history = learner.adapt(shown, max(steps))
    os.environ.setdefault("MUJOCO_GL", "egl")
    env = gymnasium.make(distribution.family.env_id, render_mode="rgb_array", camera_name="track", width=size[0],
                         height=size[1]).unwrapped
    rows = []
    try:
        for row, task in enumerate(chosen):
            goal = goals[task].tolist()
            for step in steps:
                seed = int(derive_seeds(shown.trajectory_seeds(cfg.task.trajectories, step), ENV_STREAM)[row, 0])
                env.reset(seed=seed, options={env.task_option: goal[0] if len(goal) == 1 else goal})
                episodes, frames = history[step], []
                length = int(episodes.masks[row, 0].sum())
                for t in range(length + 1):
                    if t % every == 0 or t == length:
                        frames.append({"t": t, "x": float(env.data.qpos[0]), "image": env.render()})
                    if t < length:
                        env.step(episodes.actions[row, 0, t].double().numpy())
                label = " ".join(f"{g:+.2f}" for g in goal)
                rows.append({"title": f"task {label}, {step_label(step)}: return {episodes.returns[row, 0]:.1f}",
                             "frames": frames})
    finally:
        env.close()
    return rows


@torch.no_grad()
def segmentation_examples(cfg: Config, learner: SegmentationLearner, split: str = "test", count: int = 6
                          ) -> list[dict]:
    """The first ``count`` fixed canvases of ``split`` (those the evaluation scores first) as numpy arrays: the
    canvas and reference (H, W, 3), the true mask, the predicted one (foreground probability above 0.3, as
    scored), the predicted box (left, top, width, height) and the canvas's mask IoU."""
    batch = build_tasks(cfg, split).fixed_tasks(count, split, seed=fixed_seed(cfg, split))
    logits = at_least_fp32(learner.segment(batch.references, batch.canvases))
    boxes = learner.detect(batch.references, batch.canvases).boxes
    ious = mask_iou(torch.sigmoid(logits), batch.masks)
    return [{"canvas": canvas.permute(1, 2, 0).numpy(), "reference": reference.permute(1, 2, 0).numpy(),
             "mask": mask.numpy(), "predicted": (logit > MASK_LOGIT_THRESHOLD).numpy(), "box": box.tolist(),
             "iou": iou.item()}
            for canvas, reference, mask, logit, box, iou in zip(batch.canvases, batch.references, batch.masks,
                                                                logits, boxes, ious)]
