"""The linear feature baseline of Duan et al. (2016)'s benchmark, fitted per task, all tasks at once.

Features of a step: the observation o (clipped to [-10, 10]), o**2, the time t, t**2, t**3 and 1, with t
the step index / 100 (as in rllab's LinearFeatureBaseline). The baseline is a linear regression of the
discounted return on them, fitted by regularised least squares, (F^T F + reg I) w = F^T y, one system per
task over all of its trajectories' valid steps, solved for every task in one batched call. MAML-RL fits it
separately for each task at each iteration (Finn et al., App. A.2) and predicts on the same trajectories.
"""
from __future__ import annotations

import torch

from fastadapt.rl.rollout import Episodes

TIME_SCALE = 100.0
OBSERVATION_CLIP = 10.0
#: rllab's regulariser, multiplied by 10 (up to 5 times) for a task whose system is too ill-conditioned
REGULARISER, REGULARISER_TRIES = 1e-5, 5


def baseline_features(observations: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """(..., steps, obs) observations and (steps,) times -> (..., steps, 2 * obs + 4) features."""
    o = observations.clamp(-OBSERVATION_CLIP, OBSERVATION_CLIP)
    t = (times.to(o.dtype) / TIME_SCALE)[:, None].expand(*o.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-task regularised least squares: features (tasks, M, D), targets and 0/1 weights (tasks, M)
    -> coefficients (tasks, D), in float64."""
    f, y, w = features.double(), targets.double(), weights.double()
    gram = f.transpose(1, 2) @ (f * w[..., None])
    moment = (f.transpose(1, 2) @ (y * w)[..., None]).squeeze(-1)
    eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
    scale = REGULARISER * torch.ones(f.shape[0], 1, 1, dtype=f.dtype, device=f.device)
    for _ in range(REGULARISER_TRIES):
        coefficients = torch.linalg.solve(gram + scale * eye, moment)
        bad = ~torch.isfinite(coefficients).all(-1)
        if not bad.any():
            break
        scale = torch.where(bad[:, None, None], scale * 10, scale)
    return coefficients


def linear_baseline_values(episodes: Episodes, returns: torch.Tensor) -> torch.Tensor:
    """Fit each task's baseline to ``returns`` (tasks, N, L) on its valid steps; its predictions (tasks, N, L)."""
    features = baseline_features(episodes.observations, episodes.times)
    tasks, trajectories, steps, width = features.shape
    coefficients = fit_linear_baseline(features.reshape(tasks, -1, width), returns.reshape(tasks, -1),
                                       episodes.masks.reshape(tasks, -1))
    return (features.double() @ coefficients[:, None, :, None]).squeeze(-1).to(returns.dtype) * episodes.masks
