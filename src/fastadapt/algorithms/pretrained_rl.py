"""The baselines of MAML-RL (Finn et al. 2017, section 5.3): a pretrained policy, a random initialisation and
an oracle, all adapted at test time by the same policy-gradient steps as MAML.

* pretrained: one policy trained with TRPO on trajectories of all training tasks jointly, with no
  adaptation inside the objective (MAML-RL with zero inner steps);
* random init: the same network, not trained at all (``PretrainedPolicy`` meta-trained for 0 iterations);
* oracle: the pretrained recipe on tasks whose observations include the goal
  (``Navigation2DTasks(observe_goal=True)``): the return a policy reaches when told the task.

The step size of the test-time steps is chosen on validation tasks (the paper: "tuned for each domain").
"""
from __future__ import annotations

from fastadapt.algorithms.maml_rl import MAMLRL, policy_gradient_spec


class PretrainedPolicy(MAMLRL):
    min_inner_steps = 0

    def __init__(self, policy, **options) -> None:
        if options.pop("inner_steps", 0):
            raise ValueError("the pretrained baseline trains without inner steps; set inner_steps to 0")
        super().__init__(policy, inner_steps=0, **options)


SPECS = (policy_gradient_spec("pretrained-rl", PretrainedPolicy),)
