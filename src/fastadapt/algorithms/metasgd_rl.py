"""Meta-SGD for reinforcement learning (Li, Zhou, Chen and Li, 2017, section 4.3): MAML-RL with a learned step
size per weight.

The inner policy-gradient step becomes phi_i = theta - alpha ∘ grad L_i(theta), where alpha has the shape
of theta, starts at MAML's step size everywhere, and is meta-trained with theta by the same TRPO step (the
post-update policies, hence the surrogate and its KL, depend on alpha as they depend on theta). Everything
else is MAML-RL's: sampling, the linear baseline, second-order meta-gradients, evaluation after 0..3 steps.

Test-time steps use the learned alpha scaled by ``eval_inner_lrs[k] / inner_lr`` (so the paper's schedule
alpha, then alpha / 2, keeps its meaning: the learned step, then half of it).
"""
from __future__ import annotations

from fastadapt.algorithms.maml_rl import MAMLRL, Params, policy_gradient_spec
from fastadapt.algorithms.step_sizes import StepSizes
from fastadapt.models.policies import MLPPolicy


class MetaSGDRL(MAMLRL):
    def __init__(self, policy: MLPPolicy, inner_lr: float = 0.1, **maml_options) -> None:
        super().__init__(policy, inner_lr=inner_lr, **maml_options)
        self.inner_rates = StepSizes(policy.named_parameters(), inner_lr)

    def step_sizes(self, lr: float) -> Params:
        return {name: rate * (lr / self.inner_lr) for name, rate in self.inner_rates.by_weight().items()}


SPECS = (policy_gradient_spec("metasgd-rl", MetaSGDRL),)
