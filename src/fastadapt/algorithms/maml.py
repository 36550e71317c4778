"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, 2017).

For each task T_i the inner loop takes ``inner_steps`` gradient steps from the
shared initialisation theta on the support loss:

    phi_i = theta - alpha * grad_theta L_support(T_i; theta)      (repeated)

and the meta-loss is the mean query loss of the adapted parameters,
sum_i L_query(T_i; phi_i), whose gradient flows back through the inner loop
(second order). With ``first_order=True`` the inner gradients are treated as
constants (FOMAML), which drops the Hessian-vector products.

All tasks of a meta-batch are adapted at once: ``torch.func.vmap`` maps the
per-task inner loop (``functional_call`` + ``torch.func.grad``) over the task
dimension, so there is no Python loop over tasks. Predictions are vmapped
too, except for large tasks on CPU (see ``predict``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fastadapt.algorithms.base import MetaLearner, per_task_loss
from fastadapt.models.conv4 import to_channels_last

Params = dict[str, torch.Tensor]

#: On CPU, ``predict`` runs tasks whose query set holds at least this many input values one by one
#: (measured break-even: about five 28x28 images); smaller tasks (sinusoid) and GPUs use one vmapped call.
PER_TASK_MIN_VALUES = 4096


def check_learning_rate(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be a positive learning rate, got {value}")
    return float(value)


class MAML(MetaLearner):
    uses_adaptation_steps = True

    def __init__(
        self,
        model: nn.Module,
        loss: str,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
    ) -> None:
        super().__init__(loss)
        self.model = model
        self.inner_lr = check_learning_rate("inner_lr (alpha)", inner_lr)
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be at least 1, got {inner_steps}")
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order

    # -- the per-task pieces, written for one task and vmapped over the batch --
    def _forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, (params, dict(self.model.named_buffers())), (x,))

    def _support_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_task_loss(self._forward(params, x).unsqueeze(0), y.unsqueeze(0), self.loss)[0]

    def inner_learning_rates(self) -> Params | float:
        """Step size of the inner loop: one scalar for MAML (Meta-SGD learns one per weight)."""
        return self.inner_lr

    def _inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, first_order: bool) -> Params:
        grads = grad(self._support_loss)(params, x, y)
        rates = self.inner_learning_rates()
        updated = {}
        for name, p in params.items():
            g = grads[name].detach() if first_order else grads[name]
            rate = rates[name] if isinstance(rates, dict) else rates
            updated[name] = p - rate * g
        return updated

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Adapted parameters of every task, each with a leading task dimension."""
        if steps is None:
            steps = self.inner_steps if self.training else self.eval_inner_steps
        first_order = self.first_order or not torch.is_grad_enabled()
        theta = dict(self.model.named_parameters())

        def adapt_one(x: torch.Tensor, y: torch.Tensor) -> Params:
            params = theta
            for _ in range(steps):
                params = self._inner_step(params, x, y, first_order)
            # Copy so every task gets its own leading-dimension tensor even with 0 steps.
            return {name: p + 0 for name, p in params.items()}

        return vmap(adapt_one, randomness="different")(support_x, support_y)

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        if query_x.device.type == "cpu" and query_x[0].numel() >= PER_TASK_MIN_VALUES:
            # One task at a time: its activations then stay in the CPU's caches, and no per-task weight
            # turns a layer into vmap's grouped form (split affine norms, copies). MAML on Omniglot Conv-4
            # (75 queries a task, meta-batch 32, 2 cores) steps 2.7x faster so (benchmarks/speed.py).
            # Channels-last images and convolution weights: oneDNN convolves those about 1.5x faster.
            per_task = [dict(zip(adapted, map(to_channels_last, params)))
                        for params in zip(*(p.unbind() for p in adapted.values()))]
            return torch.stack([self._forward(params, to_channels_last(x)) for params, x in zip(per_task, query_x)])
        return vmap(self._forward, randomness="different")(adapted, query_x)

