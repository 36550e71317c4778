"""Trust region policy optimisation (Schulman et al. 2015): one constrained step on a surrogate objective.

Given a closure returning (surrogate loss to minimise, mean KL from the policy that collected the data),
``trpo_step``:

1. takes the gradient g of the loss;
2. solves H s = -g by conjugate gradient, where H is the Hessian of the KL (the Fisher information), used
   only through exact Hessian-vector products (double backward; for MAML-RL they reach through the inner
   gradient step, so no finite differences are needed);
3. scales s so that the quadratic model of the KL equals ``max_kl``: beta = sqrt(2 max_kl / s^T H s);
4. backtracks (beta, ratio * beta, ratio^2 * beta, ...) until the loss decreases and the KL, measured
   exactly, is within ``max_kl``; if no step qualifies the parameters stay where they were.

``curvature_kl``, if given, is a cheaper KL (e.g. on a subset of the batch, as rllab's ``subsample_factor``)
whose Hessian stands in for the full one in steps 2-3; the line search still measures the full KL.

``average``, if given, averages a tensor over processes that each hold a share of the batch (an all-reduce):
it is applied to the gradient, every Fisher-vector product and every loss and KL the line search measures,
so the processes take the step one process would take on the whole batch, up to rounding, in lockstep.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fastadapt.options import (HALF_OPEN_UNIT_INTERVAL, NON_NEGATIVE, OPEN_UNIT_INTERVAL, POSITIVE, POSITIVE_INT,
                               Options, setting)


@dataclass(frozen=True)
class TRPOSettings(Options):
    """The TRPO outer step's options (MAML-RL's family)."""

    max_kl: float = setting(0.01, "TRPO: trust region, the largest mean KL between the policies before and after "
                                  "a step", rule=POSITIVE)
    cg_iterations: int = setting(10, "TRPO: conjugate-gradient iterations", rule=POSITIVE_INT)
    cg_damping: float = setting(1e-5, "TRPO: damping added to the KL Hessian", rule=NON_NEGATIVE)
    line_search_steps: int = setting(15, "TRPO: backtracking steps of the line search", rule=POSITIVE_INT)
    backtrack_ratio: float = setting(0.8, "TRPO: step shrink factor of each backtrack", rule=OPEN_UNIT_INTERVAL)
    curvature_fraction: float = setting(1.0, "TRPO: share of the meta-batch's tasks whose KL Hessian the conjugate "
                                             "gradient uses (1.0: all; the line search always checks the full KL)",
                                        rule=HALF_OPEN_UNIT_INTERVAL)


def conjugate_gradient(matrix_vector: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       iterations: int, tolerance: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive-definite A given only x -> A x."""
    x = torch.zeros_like(b)
    residual, direction = b.clone(), b.clone()
    residual_norm = residual @ residual
    for _ in range(iterations):
        if residual_norm < tolerance:
            break
        product = matrix_vector(direction)
        alpha = residual_norm / (direction @ product)
        x = x + alpha * direction
        residual = residual - alpha * product
        new_norm = residual @ residual
        direction = residual + (new_norm / residual_norm) * direction
        residual_norm = new_norm
    return x


def trpo_step(parameters: list[torch.nn.Parameter], loss_and_kl: Callable[[], tuple[torch.Tensor, torch.Tensor]],
              settings: TRPOSettings, curvature_kl: Callable[[], torch.Tensor] | None = None,
              average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Update ``parameters`` in place; returns the loss before/after, the KL reached and the backtracks taken."""
    average = average or (lambda tensor: tensor)
    loss, kl = loss_and_kl()
    gradient = average(parameters_to_vector(torch.autograd.grad(loss, parameters, retain_graph=curvature_kl is None)))
    loss = average(loss.detach())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"TRPO surrogate loss is {loss.item()}: the returns or the policy contain NaN/inf")
    if curvature_kl is not None:
        kl = curvature_kl()
    kl_gradient = parameters_to_vector(torch.autograd.grad(kl, parameters, create_graph=True))

    def fisher_vector(v: torch.Tensor) -> torch.Tensor:
        product = torch.autograd.grad(kl_gradient @ v, parameters, retain_graph=True)
        return average(parameters_to_vector(product)) + settings.cg_damping * v

    direction = conjugate_gradient(fisher_vector, -gradient, settings.cg_iterations)
    curvature = direction @ fisher_vector(direction)
    old = parameters_to_vector(parameters).detach()
    info = {"loss_before": loss.item(), "loss_after": loss.item(), "kl": 0.0, "backtracks": settings.line_search_steps}
    if not curvature > 0:  # zero gradient (nothing to learn from this batch) or numerical trouble: no step
        return info
    full_step = torch.sqrt(2 * settings.max_kl / curvature) * direction
    with torch.no_grad():
        for backtrack in range(settings.line_search_steps):
            vector_to_parameters(old + settings.backtrack_ratio**backtrack * full_step, parameters)
            new_loss, new_kl = average(torch.stack(loss_and_kl()))
            if new_kl <= settings.max_kl and new_loss < loss:
                info.update(loss_after=new_loss.item(), kl=new_kl.item(), backtracks=backtrack)
                return info
        vector_to_parameters(old, parameters)
    return info
