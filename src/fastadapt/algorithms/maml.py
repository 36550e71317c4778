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
too, except for large tasks on CPU (see ``predict``). In training, each task's
query loss is differentiated as soon as it is computed (see ``meta_loss``), so
the query activations of the whole meta-batch are never alive at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from fastadapt.algorithms.base import MetaLearner, per_task_loss
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.models.conv4 import to_channels_last
from fastadapt.options import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE_LR, Options, check_option, read_options, setting
from fastadapt.tasks.base import TaskBatch


Params = dict[str, torch.Tensor]

#: On CPU, ``predict`` runs tasks whose query set holds at least this many input values one by one
#: (measured break-even: about five 28x28 images); smaller tasks (sinusoid) and GPUs use one vmapped call.
PER_TASK_MIN_VALUES = 4096


@dataclass(frozen=True)
class InnerLoopOptions(Options):
    """The inner loop of the gradient-based methods (MAML's family here, MAML-RL's in maml_rl)."""

    inner_lr: float = setting(0.01, "step size alpha of the inner loop (gradient-based methods)", rule=POSITIVE_LR)
    inner_steps: int = setting(1, "inner-loop gradient steps in training (gradient-based methods)",
                               rule=AT_LEAST_ONE)
    first_order: bool = setting(False, "drop second-order terms of the meta-gradient (MAML)")


@dataclass(frozen=True)
class EvalStepsOptions(Options):
    """How many inner steps a gradient-based learner of images or regression takes at evaluation."""

    eval_inner_steps: int | None = setting(None, "inner-loop steps at evaluation (default: inner_steps)",
                                           rule=NON_NEGATIVE)


class MAML(MetaLearner):
    uses_adaptation_steps = True
    captures_whole_step = True  # fixed shapes, no .item(), no branch on values (tests/test_captured.py)

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
        check_option(InnerLoopOptions, "inner_lr", inner_lr)
        check_option(InnerLoopOptions, "inner_steps", inner_steps)
        self.inner_lr, self.inner_steps = float(inner_lr), inner_steps
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
            if steps == 0:  # a copy, so that every task still gets its own leading-dimension tensor
                return {name: p + 0 for name, p in theta.items()}
            params = theta
            for _ in range(steps):
                params = self._inner_step(params, x, y, first_order)
            return params

        return vmap(adapt_one, randomness="different")(support_x, support_y)

    @staticmethod
    def _runs_per_task(query_x: torch.Tensor) -> bool:
        """On CPU, tasks with at least ``PER_TASK_MIN_VALUES`` input values a query set run one by one: their
        activations then stay in the CPU's caches, and no per-task weight turns a layer into vmap's grouped
        form (split affine norms, copies). MAML on Omniglot Conv-4 (75 queries a task, meta-batch 32,
        2 cores) steps 2.7x faster so (benchmarks/speed.py). Such tasks run in channels-last: oneDNN
        convolves channels-last images and weights about 1.5x faster."""
        return query_x.device.type == "cpu" and query_x[0].numel() >= PER_TASK_MIN_VALUES

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        if self._runs_per_task(query_x):
            per_task = [dict(zip(adapted, map(to_channels_last, params)))
                        for params in zip(*(p.unbind() for p in adapted.values()))]
            return torch.stack([self._forward(params, to_channels_last(x)) for params, x in zip(per_task, query_x)])
        return vmap(self._forward, randomness="different")(adapted, query_x)

    def _query_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self._forward(params, x)
        return per_task_loss(outputs.unsqueeze(0), y.unsqueeze(0), self.loss)[0], outputs

    def _query_gradients(self, adapted: Params, query_x: torch.Tensor,
                         query_y: torch.Tensor) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Each task's query loss, outputs and gradient with respect to its (detached) adapted weights."""
        if not self._runs_per_task(query_x):
            grads, (losses, outputs) = vmap(grad_and_value(self._query_loss, has_aux=True),
                                            randomness="different")(adapted, query_x, query_y)
            return grads, losses, outputs
        grads: dict[str, list[torch.Tensor]] = {name: [] for name in adapted}
        losses, outputs = [], []
        for t, (x, y) in enumerate(zip(query_x, query_y)):
            params = {name: to_channels_last(p[t]).requires_grad_() for name, p in adapted.items()}
            loss, out = self._query_loss(params, to_channels_last(x), y)
            for (name, p), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()),
                                                                           allow_unused=True)):
                grads[name].append(torch.zeros_like(p) if g is None else g)  # zero for a weight the loss ignores
            losses.append(loss.detach())
            outputs.append(out.detach())
        return {name: torch.stack(g) for name, g in grads.items()}, torch.stack(losses), torch.stack(outputs)

    def meta_loss(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss after adaptation, its query pass differentiated at once, task by task.

        The meta-gradient is the mean over tasks of (dL_t/dphi_t)(dphi_t/dtheta). Each task's query loss
        L_t is differentiated with respect to its adapted weights phi_t right after its forward pass, which
        frees that pass's activations; the loss returned has the value of the mean query loss and the
        gradient of mean_t <dL_t/dphi_t, phi_t>, which carries those gradients back through the inner loop.
        The same meta-gradient and FLOPs as differentiating the mean query loss, but the query activations
        alive at once are one task's (CPU) or one vmapped call's, not the whole meta-batch's until the
        backward pass: the query sets are where the images, so the memory, are.
        """
        if not torch.is_grad_enabled() or tasks.query_x[0].numel() < PER_TASK_MIN_VALUES:
            # nothing to differentiate, or query sets too small to be worth freeing early (sinusoid: the extra
            # gradient call costs a fifth of a step of the MLP)
            return super().meta_loss(tasks)
        adapted = self.adapt(tasks.support_x, tasks.support_y)
        grads, losses, outputs = self._query_gradients({name: p.detach() for name, p in adapted.items()},
                                                       tasks.query_x, tasks.query_y)
        loss = losses.mean()
        carried = sum((g * adapted[name]).sum() for name, g in grads.items()) / tasks.num_tasks
        return loss + (carried - carried.detach()), self.metrics(outputs, tasks.query_y, loss)


#: The options of every learner built on MAML's inner loop.
GRADIENT_OPTIONS = (InnerLoopOptions, EvalStepsOptions)


def gradient_options(method) -> dict:
    """The inner-loop options of a run's method settings, as MAML and its subclasses take them."""
    return read_options(GRADIENT_OPTIONS, method)


def build_gradient_based(cls: type[MAML], **fixed):
    """The builder of a learner on MAML's inner loop (``fixed`` overrides settings: FOMAML's first_order)."""
    def build(context) -> MAML:
        return cls(context.model(), context.tasks.loss, **{**gradient_options(context.cfg.method), **fixed})

    return build


SPECS = (
    MethodSpec("maml", MAML, build_gradient_based(MAML), GRADIENT_OPTIONS, gradient_based=True),
    MethodSpec("fomaml", MAML, build_gradient_based(MAML, first_order=True), GRADIENT_OPTIONS, gradient_based=True),
)
