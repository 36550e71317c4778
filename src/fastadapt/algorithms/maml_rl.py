"""MAML for reinforcement learning (Finn, Abbeel and Levine, 2017, section 3.2 and 5.3).

For each task T_i of a meta-batch (an MDP: a goal to reach, ...):

1. sample ``trajectories`` (20) trajectories with the shared policy pi_theta;
2. fit the linear feature baseline to them (per task) and compute advantages;
3. take a vanilla policy-gradient step: phi_i = theta - alpha grad_theta L_i(theta), with
   L_i = -mean_t log pi_theta(a_t | s_t) A_t (repeated ``inner_steps`` times, new trajectories each time);
4. sample new trajectories with pi_phi_i.

The outer update is a TRPO step on theta for the post-update surrogate sum_i mean_t [pi_phi_i(theta)(a|s) /
pi_phi_i(theta_old)(a|s) A_t], constrained by the mean KL between the post-update policies before and after
the step (``max_kl`` 0.01). phi_i(theta) is differentiated through the inner step (second order), and the
Hessian-vector products of the KL reach through it too (exact double backward; the paper used finite
differences). ``first_order`` treats the inner gradients as constants. Those Hessian-vector products are
most of the cost; ``TRPOSettings.curvature_fraction`` < 1 takes them on a share of the meta-batch's tasks.

The inner loop is batched over tasks: ``torch.func.vmap`` maps the per-task step (``functional_call`` +
``torch.func.grad``) over the task dimension, and every rollout steps all tasks x trajectories at once.

Evaluation follows the paper: sample with theta, step, sample again... and report the mean return after
0, 1, 2, 3 steps; the paper used alpha for the first step and alpha / 2 after (``eval_inner_lrs``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.func import functional_call, grad, vmap

from fastadapt.algorithms.base import RLMetaLearner
from fastadapt.algorithms.maml import InnerLoopOptions
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.models.policies import MLPPolicy
from fastadapt.options import Options, Rule, check_option, options_of, setting
from fastadapt.rl import (Episodes, TRPOSettings, discounted_returns, gae, linear_baseline_values,
                          masked_mean_per_task, normalize_per_task, policy_gradient_loss, rollout, surrogate_loss,
                          trpo_step)
from fastadapt.rl.returns import ReturnOptions
from fastadapt.tasks.mdp import MDPBatch

Params = dict[str, torch.Tensor]


def check_rewards(episodes: Episodes) -> None:
    if not torch.isfinite(episodes.rewards).all():
        raise FloatingPointError("a rollout returned a non-finite (NaN or inf) reward: the environment or the "
                                 "policy's actions diverged")


@dataclass(frozen=True)
class AdaptationScheduleOptions(Options):
    """The step sizes of the policy-gradient learners' test-time adaptation."""

    eval_inner_lrs: list[float] = setting(help="RL: step size of each test-time adaptation step, the last one "
                                               "repeated (default: inner_lr; the MAML paper: alpha, then alpha/2)",
                                          factory=list, resumable="evaluation",
                                          rule=Rule("must hold positive step sizes", lambda lr: lr > 0))


class MAMLRL(RLMetaLearner):
    uses_adaptation_steps = True
    uses_optimizer = False
    #: fewest inner steps meta-training may take (the pretrained baseline takes none)
    min_inner_steps = 1

    def __init__(self, policy: MLPPolicy, inner_lr: float = 0.1, inner_steps: int = 1, trajectories: int = 20,
                 first_order: bool = False, gamma: float = 0.99, gae_lambda: float = 1.0,
                 trpo: TRPOSettings = TRPOSettings(), eval_inner_lrs: Sequence[float] | None = None,
                 normalize_advantages: bool = True) -> None:
        super().__init__()
        if getattr(policy, "recurrent", False):
            raise ValueError("MAML-RL adapts a feed-forward policy by gradient steps; a recurrent policy is RL^2's")
        check_option(InnerLoopOptions, "inner_lr", inner_lr)
        if not isinstance(inner_steps, int) or inner_steps < self.min_inner_steps:
            raise ValueError(f"inner_steps must be an integer >= {self.min_inner_steps}, got {inner_steps!r}")
        if not isinstance(trajectories, int) or trajectories < 2:
            raise ValueError(f"trajectories per task must be at least 2 (advantages are normalised over them), "
                             f"got {trajectories!r}")
        self.eval_inner_lrs = list(eval_inner_lrs) if eval_inner_lrs else [inner_lr]
        check_option(AdaptationScheduleOptions, "eval_inner_lrs", self.eval_inner_lrs)
        self.policy = policy
        self.inner_lr, self.inner_steps, self.trajectories = float(inner_lr), inner_steps, trajectories
        self.first_order, self.gamma, self.gae_lambda = first_order, gamma, gae_lambda
        self.trpo, self.normalize_advantages = trpo, normalize_advantages

    # --- pieces ---
    def sample(self, tasks: MDPBatch, round_: int, params: Params | None = None) -> Episodes:
        """Trajectories of every task with theta (``params`` None) or each task's adapted parameters."""
        detached = None if params is None else {name: p.detach() for name, p in params.items()}
        episodes = rollout(tasks.env, self.policy, tasks.trajectory_seeds(self.trajectories, round_), detached)
        check_rewards(episodes)
        return episodes

    def advantages(self, episodes: Episodes) -> torch.Tensor:
        """GAE on each task's linear baseline (fitted to that task's trajectories), normalised per task."""
        returns = discounted_returns(episodes.rewards, self.gamma)
        values = linear_baseline_values(episodes, returns)
        advantages = gae(episodes.rewards, values, episodes.masks, self.gamma, self.gae_lambda)
        return normalize_per_task(advantages, episodes.masks) if self.normalize_advantages else advantages

    def _inner_loss(self, params: Params, observations: torch.Tensor, actions: torch.Tensor,
                    advantages: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One task's vanilla policy-gradient loss (arguments without the task dimension)."""
        dist = functional_call(self.policy, params, (observations,))
        log_probs = self.policy.actions.log_prob(dist, actions)
        return policy_gradient_loss(log_probs[None], advantages[None], masks[None])[0]

    def step_sizes(self, lr: float) -> dict[str, float | torch.Tensor]:
        """The inner step's size for every weight: ``lr`` everywhere for MAML (Meta-SGD-RL learns them)."""
        return dict.fromkeys((name for name, _ in self.policy.named_parameters()), lr)

    def inner_step(self, params: Params, per_task: bool, episodes: Episodes, advantages: torch.Tensor,
                   lr: float, first_order: bool) -> Params:
        """phi_i = params - lr * grad L_i(params) for every task at once; ``per_task``: params carry a task dim."""
        sizes = self.step_sizes(lr)

        def step_one_task(p: Params, observations, actions, task_advantages, masks) -> Params:
            grads = grad(self._inner_loss)(p, observations, actions, task_advantages, masks)
            return {name: p[name] - sizes[name] * (grads[name].detach() if first_order else grads[name])
                    for name in p}

        return vmap(step_one_task, in_dims=(0 if per_task else None, 0, 0, 0, 0))(
            params, episodes.observations, episodes.actions, advantages, episodes.masks)

    def adapted(self, rounds: list[tuple[Episodes, torch.Tensor]], first_order: bool) -> Params | None:
        """phi(theta) after one inner step per recorded round (None: no step, theta itself), differentiable."""
        params: Params = dict(self.policy.named_parameters())
        for index, (episodes, advantages) in enumerate(rounds):
            params = self.inner_step(params, index > 0, episodes, advantages, self.inner_lr, first_order)
        return params if rounds else None

    def surrogate_and_kl(self, rounds: list[tuple[Episodes, torch.Tensor]], final: Episodes,
                         final_advantages: torch.Tensor, old_dist) -> tuple[torch.Tensor, torch.Tensor]:
        """The outer objective at the current theta: mean over tasks of the post-update surrogate loss, and of
        the KL between the post-update policy that sampled ``final`` and the one theta now gives."""
        dist = self.policy.distribution(final.observations, self.adapted(rounds, self.first_order))
        log_probs = self.policy.actions.log_prob(dist, final.actions)
        loss = surrogate_loss(log_probs, final.log_probs, final_advantages, final.masks).mean()
        kl = masked_mean_per_task(self.policy.actions.kl(old_dist, dist), final.masks).mean()
        return loss, kl

    # --- the interface ---
    def meta_update(self, tasks: MDPBatch, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        rounds: list[tuple[Episodes, torch.Tensor]] = []
        params = None
        for round_ in range(self.inner_steps):
            episodes = self.sample(tasks, round_, params)
            rounds.append((episodes, self.advantages(episodes)))
            params = self.inner_step(params or dict(self.policy.named_parameters()), params is not None,
                                     *rounds[-1], self.inner_lr, first_order=True)
        final = self.sample(tasks, self.inner_steps, params)
        final_advantages = self.advantages(final)
        with torch.no_grad():
            old_dist = self.policy.actions.detach(self.policy.distribution(final.observations, params))
        curvature_kl = None
        if self.trpo.curvature_fraction < 1:  # the KL Hessian from the first tasks only (they are a random subset)
            few = slice(0, max(1, round(self.trpo.curvature_fraction * tasks.num_tasks)))
            some_rounds = [(episodes.select(few), advantages[few]) for episodes, advantages in rounds]
            curvature_kl = lambda: self.surrogate_and_kl(  # noqa: E731
                some_rounds, final.select(few), final_advantages[few], self.policy.actions.select(old_dist, few))[1]
        info = trpo_step(list(self.parameters()),
                         lambda: self.surrogate_and_kl(rounds, final, final_advantages, old_dist), self.trpo,
                         curvature_kl, average=self.process_mean)
        metrics = {"return": final.returns.mean().item(), "kl": info["kl"], "backtracks": info["backtracks"],
                   "surrogate_gain": info["loss_before"] - info["loss_after"]}
        if rounds:
            metrics["return_pre_update"] = rounds[0][0].returns.mean().item()
        return metrics

    def eval_lr(self, step: int) -> float:
        return self.eval_inner_lrs[min(step, len(self.eval_inner_lrs) - 1)]

    def adapt(self, tasks: MDPBatch, steps: int) -> tuple[Params | None, list[Episodes]]:
        """Adapt to every task by ``steps`` policy-gradient steps (new trajectories before each step, as at test
        time); returns the adapted parameters (None for 0 steps) and the trajectories of rounds 0..steps."""
        params, history = None, []
        for step in range(steps + 1):
            episodes = self.sample(tasks, step, params)
            history.append(episodes)
            if step < steps:
                theta = params or {name: p.detach() for name, p in self.policy.named_parameters()}
                params = self.inner_step(theta, params is not None, episodes, self.advantages(episodes),
                                         self.eval_lr(step), first_order=True)
                params = {name: p.detach() for name, p in params.items()}
        return params, history

    def evaluate_returns(self, tasks: MDPBatch, steps: list[int] | None = None) -> dict[int | None, torch.Tensor]:
        """Each task's mean return over its trajectories after each number of steps in ``steps``; without
        ``steps``, {None: the return after as many steps as meta-training takes} (the validation score)."""
        wanted = sorted(set([self.inner_steps] if steps is None else steps))
        if not wanted or wanted[0] < 0:
            raise ValueError(f"evaluation steps must be >= 0, got {steps}")
        _, history = self.adapt(tasks, wanted[-1])
        if steps is None:
            return {None: history[self.inner_steps].returns.mean(1)}
        return {step: history[step].returns.mean(1) for step in wanted}


#: The options of the learners on MAML-RL's policy-gradient inner loop and TRPO outer step.
POLICY_GRADIENT_OPTIONS = (InnerLoopOptions, ReturnOptions, AdaptationScheduleOptions, TRPOSettings)


def build_policy_gradient(cls: type[MAMLRL]):
    """The builder of MAML-RL, Meta-SGD-RL or the pretrained policy from a run's settings."""
    def build(context) -> MAMLRL:
        method = context.cfg.method
        options = dict(inner_lr=method.inner_lr, trajectories=context.cfg.task.trajectories,
                       first_order=method.first_order, gamma=method.gamma, gae_lambda=method.gae_lambda,
                       trpo=options_of(TRPOSettings, method), eval_inner_lrs=method.eval_inner_lrs or None)
        if cls.min_inner_steps > 0:
            options["inner_steps"] = method.inner_steps
        return cls(context.model(), **options)

    return build


def policy_gradient_spec(name: str, cls: type[MAMLRL]) -> MethodSpec:
    """The specification of MAML-RL, Meta-SGD-RL or the pretrained policy: a feed-forward policy adapted by
    policy-gradient steps, GAE with lambda 1.0 unless set (the MAML paper's code)."""
    return MethodSpec(name, cls, build_policy_gradient(cls), POLICY_GRADIENT_OPTIONS, rl=True, policy="feedforward",
                      defaults={"gae_lambda": 1.0})


SPECS = (policy_gradient_spec("maml-rl", MAMLRL),)
