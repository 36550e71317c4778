"""Speed of meta-RL on 2D navigation: the batched simulator against gymnasium, and a MAML-RL meta-iteration
against a per-task reference loop.

1. Environment steps per second: ``BatchedNavigation2D`` stepping tasks x trajectories environments as one
   tensor operation, against gymnasium's ``SyncVectorEnv`` over the same number of ``Navigation2DEnv``
   (the gymnasium version of the same environment), both with the same pre-drawn random actions.
2. One MAML-RL meta-iteration (sampling before and after the inner step, the inner step, a TRPO step with
   second-order meta-gradients): ``MAMLRL.meta_update`` (all tasks at once: one rollout over all tasks, the
   inner step vmapped over tasks) against a reference that loops over tasks as most public code does
   (a rollout per task, ``torch.autograd.grad(create_graph=True)`` per task, the TRPO closures summing the
   per-task graphs). Both use the same simulator and TRPO code, so the ratio is the gain of batching over
   tasks; before timing, both are run once in float64 from the same weights and their updated weights
   compared.

    python benchmarks/rl_speed.py                       # the paper's sizes: 20 tasks x 20 trajectories x 100 steps
    python benchmarks/rl_speed.py --repeats 5 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from typing import Callable

import gymnasium
import torch
from torch.func import functional_call

from fastadapt.algorithms.maml_rl import MAMLRL
from fastadapt.environments import Navigation2DEnv
from fastadapt.models.policies import GaussianMLPPolicy
from fastadapt.rl import Episodes, TRPOSettings, masked_mean_per_task, rollout, surrogate_loss, trpo_step
from fastadapt.tasks.mdp import MDPBatch, Navigation2DTasks

#: what the issue asks of the simulator: at least this many times gymnasium's SyncVectorEnv steps per second
ENV_SPEED_TARGET = 50.0


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- 1. environment steps ---
def batched_steps_per_second(tasks: MDPBatch, trajectories: int, actions: torch.Tensor, repeats: int) -> float:
    env = tasks.env

    def run() -> None:
        env.reset(tasks.trajectory_seeds(trajectories, 0))
        for t in range(actions.shape[2]):
            env.step(actions[:, :, t])

    return actions[..., 0].numel() / median_seconds(run, repeats)


def gymnasium_steps_per_second(tasks: MDPBatch, trajectories: int, actions: torch.Tensor, repeats: int,
                               horizon: int) -> float:
    goals = tasks.env.goals.double().numpy()
    makers = [lambda goal=goal: Navigation2DEnv(goal=goal, horizon=horizon)
              for goal in goals for _ in range(trajectories)]
    vector = gymnasium.vector.SyncVectorEnv(makers)
    flat = actions.flatten(0, 1).numpy()  # (envs, steps, 2)

    def run() -> None:
        vector.reset(seed=0)
        for t in range(flat.shape[1]):
            vector.step(flat[:, t])

    try:
        return flat[..., 0].size / median_seconds(run, repeats)
    finally:
        vector.close()


# --- 2. the per-task reference meta-iteration ---
def _inner_params(learner: MAMLRL, episodes: Episodes, advantages: torch.Tensor, create_graph: bool) -> dict:
    """phi = theta - alpha grad L(theta) for one task (index 0 of one-task episodes), plain autograd."""
    policy = learner.policy
    theta = dict(policy.named_parameters())
    with torch.enable_grad():  # also inside TRPO's line search, which runs under no_grad
        dist = functional_call(policy, theta, (episodes.observations[0],))
        mask = episodes.masks[0]
        loss = -(policy.actions.log_prob(dist, episodes.actions[0]) * advantages[0] * mask).sum() / mask.sum()
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph)
    return {name: p - learner.inner_lr * g for (name, p), g in zip(theta.items(), grads)}


def reference_meta_update(learner: MAMLRL, tasks: MDPBatch) -> dict[str, float]:
    """One MAML-RL meta-iteration, one task at a time (one inner step)."""
    policy, n = learner.policy, learner.trajectories
    data = []
    for index in range(tasks.num_tasks):
        task = tasks[index : index + 1]
        before = rollout(task.env, policy, task.trajectory_seeds(n, 0))
        before_advantages = learner.advantages(before)
        phi = {k: v.detach()[None] for k, v in _inner_params(learner, before, before_advantages, False).items()}
        after = rollout(task.env, policy, task.trajectory_seeds(n, 1), phi)
        with torch.no_grad():
            old = policy.actions.detach(policy.distribution(after.observations, phi))
        data.append((before, before_advantages, after, learner.advantages(after), old))

    def loss_and_kl() -> tuple[torch.Tensor, torch.Tensor]:
        losses, kls = [], []
        for before, before_advantages, after, after_advantages, old in data:
            phi = _inner_params(learner, before, before_advantages, create_graph=not learner.first_order)
            dist = functional_call(policy, phi, (after.observations[0],))
            log_probs = policy.actions.log_prob(dist, after.actions[0])
            losses.append(surrogate_loss(log_probs[None], after.log_probs, after_advantages, after.masks)[0])
            kls.append(masked_mean_per_task(policy.actions.kl(policy.actions.select(old, 0), dist)[None],
                                            after.masks)[0])
        return torch.stack(losses).mean(), torch.stack(kls).mean()

    return trpo_step(list(policy.parameters()), loss_and_kl, learner.trpo)


def make_learner(tasks_family: Navigation2DTasks, trajectories: int, curvature_fraction: float,
                 dtype: torch.dtype = torch.float32) -> MAMLRL:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(tasks_family.spaces).to(dtype)
    return MAMLRL(policy, inner_lr=0.1, trajectories=trajectories,
                  trpo=TRPOSettings(curvature_fraction=curvature_fraction))


def agreement_in_float64(curvature_fraction: float) -> float:
    """Largest weight difference between ours and the reference after one meta-iteration from the same start."""
    family = Navigation2DTasks(horizon=20, dtype=torch.float64)
    tasks = family.fixed_tasks(4, "val")
    ours = make_learner(family, 5, curvature_fraction, torch.float64)
    reference = copy.deepcopy(ours)
    ours.meta_update(tasks)
    reference_meta_update(reference, tasks)
    return max((a - b).abs().max().item() for a, b in zip(ours.parameters(), reference.parameters()))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20, help="meta-batch size (tasks)")
    parser.add_argument("--trajectories", type=int, default=20, help="trajectories per task")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--curvature-fraction", type=float, default=1.0,
                        help="share of the tasks whose KL Hessian TRPO uses (1.0: all, the paper's)")
    parser.add_argument("--skip-meta", action="store_true", help="time the environments only")
    args = parser.parse_args(argv)
    for name in ("tasks", "trajectories", "horizon", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    torch.set_num_threads(args.threads)
    family = Navigation2DTasks(horizon=args.horizon)
    tasks = family.fixed_tasks(args.tasks, "val")
    print(f"2D navigation: {args.tasks} tasks x {args.trajectories} trajectories x {args.horizon} steps; "
          f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"median of {args.repeats}")

    generator = torch.Generator().manual_seed(0)
    actions = 0.1 * (2 * torch.rand(args.tasks, args.trajectories, args.horizon, 2, generator=generator) - 1)
    ours = batched_steps_per_second(tasks, args.trajectories, actions, args.repeats)
    theirs = gymnasium_steps_per_second(tasks, args.trajectories, actions.double(), args.repeats, args.horizon)
    ratio = ours / theirs
    print(f"\nenvironment steps per second ({args.tasks * args.trajectories} environments, random actions)")
    print(f"  batched torch simulator        {ours:14,.0f}")
    print(f"  gymnasium SyncVectorEnv        {theirs:14,.0f}")
    print(f"  speed-up                       {ratio:14.1f}x   (target >= {ENV_SPEED_TARGET:.0f}x: "
          f"{'met' if ratio >= ENV_SPEED_TARGET else 'NOT met'})")
    if args.skip_meta:
        return 0

    difference = agreement_in_float64(args.curvature_fraction)
    learner = make_learner(family, args.trajectories, args.curvature_fraction)
    reference = copy.deepcopy(learner)
    ours_seconds = median_seconds(lambda: learner.meta_update(tasks), args.repeats)
    reference_seconds = median_seconds(lambda: reference_meta_update(reference, tasks), args.repeats)
    print(f"\nMAML-RL meta-iteration (sampling + inner step + TRPO step, second order, "
          f"curvature on {args.curvature_fraction:.0%} of the tasks)")
    print(f"  ours (batched over tasks)      {ours_seconds:10.2f} s")
    print(f"  per-task reference loop        {reference_seconds:10.2f} s")
    print(f"  speed-up                       {reference_seconds / ours_seconds:10.2f}x")
    print(f"  largest weight difference after one meta-iteration from the same start, float64: {difference:.1e}")
    return 0
