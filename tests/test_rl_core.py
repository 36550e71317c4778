"""The RL machinery: returns and GAE, the linear baseline, policy distributions, the policy-gradient
estimator, conjugate gradient and TRPO's trust region."""
import math

import numpy as np
import pytest
import torch

from fastadapt.environments import BatchedBernoulliBandit, Spaces
from fastadapt.models.policies import (CategoricalMLPPolicy, GaussianMLPPolicy, RecurrentPolicy, mlp_policy)
from fastadapt.rl import (TRPOSettings, conjugate_gradient, discounted_returns, fit_linear_baseline, gae,
                          linear_baseline_values, masked_mean_per_task, normalize_per_task, policy_gradient_loss,
                          replay, rollout, surrogate_loss, trpo_step)
from fastadapt.rl.baseline import baseline_features
from fastadapt.tasks.mdp import BanditTasks, MDPBatch, Navigation2DTasks, TabularMDPTasks


# Rollouts, inner steps and small GRUs are many tiny tensor operations: extra threads only add contention.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_discounted_returns_and_gae_match_a_backward_loop():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 4, 9, generator=generator, dtype=torch.float64)
    values = torch.randn(3, 4, 9, generator=generator, dtype=torch.float64)
    masks = torch.ones(3, 4, 9, dtype=torch.float64)
    masks[1, 2, 5:] = 0  # an episode that ended after 5 steps
    rewards, values = rewards * masks, values * masks
    gamma, lam = 0.9, 0.7
    expected_returns, expected_gae = torch.zeros_like(rewards), torch.zeros_like(rewards)
    running_return, running_gae = torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    for t in reversed(range(9)):
        next_value = values[..., t + 1] if t < 8 else 0.0
        running_return = rewards[..., t] + gamma * running_return
        delta = (rewards[..., t] + gamma * next_value - values[..., t]) * masks[..., t]
        running_gae = delta + gamma * lam * running_gae
        expected_returns[..., t], expected_gae[..., t] = running_return, running_gae
    torch.testing.assert_close(discounted_returns(rewards, gamma), expected_returns)
    torch.testing.assert_close(gae(rewards, values, masks, gamma, lam), expected_gae)
    torch.testing.assert_close(gae(rewards, values, masks, gamma, 1.0), (expected_returns - values) * masks)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(rewards, 1.5)


def test_advantages_are_normalised_per_task_over_valid_steps():
    advantages = torch.randn(2, 3, 5) * torch.tensor([1.0, 10.0])[:, None, None] + 4
    masks = torch.ones(2, 3, 5)
    masks[0, 0, 2:] = 0
    out = normalize_per_task(advantages, masks)
    for task in range(2):
        valid = out[task][masks[task].bool()]
        assert abs(valid.mean()) < 1e-5 and abs(valid.std(unbiased=False) - 1) < 1e-4
    assert (out[0, 0, 2:] == 0).all()


def test_linear_baseline_equals_closed_form_least_squares_per_task():
    tasks = Navigation2DTasks(horizon=7, dtype=torch.float64).fixed_tasks(3, "val")
    policy = GaussianMLPPolicy(tasks.env.spaces, (8,)).double()
    episodes = rollout(tasks.env, policy, tasks.trajectory_seeds(4, 0))
    episodes.masks[1, 0, 4:] = 0  # pretend a trajectory ended early: its padding must not count
    returns = discounted_returns(episodes.rewards * episodes.masks, 0.99)
    values = linear_baseline_values(episodes, returns)
    features = baseline_features(episodes.observations, episodes.times)
    assert features.shape[-1] == 2 * 2 + 4  # obs, obs^2, t, t^2, t^3, 1
    for task in range(3):
        valid = episodes.masks[task].bool().numpy()
        f = features[task].numpy()[valid]
        y = returns[task].numpy()[valid]
        w = np.linalg.solve(f.T @ f + 1e-5 * np.eye(f.shape[1]), f.T @ y)  # the regularised normal equations
        np.testing.assert_allclose(values[task].numpy()[valid], f @ w, rtol=1e-9, atol=1e-9)
        assert (values[task].numpy()[~valid] == 0).all()


def test_linear_baseline_survives_a_singular_system():
    features = torch.zeros(2, 5, 3, dtype=torch.float64)  # all-zero features: only the regulariser makes it solvable
    coefficients = fit_linear_baseline(features, torch.ones(2, 5), torch.ones(2, 5))
    assert torch.isfinite(coefficients).all()


def test_policy_gradient_estimator_matches_the_exact_gradient_on_a_known_bandit():
    """J(z) = sum_a softmax(z)_a p_a for a one-pull bandit; its gradient is pi * (p - J). The REINFORCE estimate
    from 40,000 seeded pulls must be within 4 standard errors of it, coordinate by coordinate."""
    p = torch.tensor([[0.1, 0.5, 0.8, 0.3]], dtype=torch.float64)
    env = BatchedBernoulliBandit(p, horizon=1)
    policy = CategoricalMLPPolicy(env.spaces, hidden_sizes=()).double()  # logits = W * 1 + b
    with torch.no_grad():
        policy.net[0].weight.copy_(torch.tensor([[0.2], [-0.4], [0.1], [0.3]]))
        policy.net[0].bias.zero_()
    tasks = MDPBatch(env, torch.tensor([7]))
    pulls = 40_000
    episodes = rollout(env, policy, tasks.trajectory_seeds(pulls, 0))
    logits = policy.net[0].weight[:, 0].detach()
    pi = torch.softmax(logits, 0)
    exact = pi * (p[0] - (pi * p[0]).sum())
    counts = torch.bincount(episodes.actions.flatten(), minlength=4).double()
    torch.testing.assert_close(counts / pulls, pi, atol=0.01, rtol=0)  # sampling follows the policy

    log_probs = policy.actions.log_prob(policy(episodes.observations), episodes.actions)
    loss = policy_gradient_loss(log_probs, episodes.rewards, episodes.masks)[0]
    estimate = -torch.autograd.grad(loss, policy.net[0].bias)[0]
    per_pull = (torch.nn.functional.one_hot(episodes.actions.flatten(), 4) - pi) * episodes.rewards.flatten()[:, None]
    standard_error = per_pull.std(0) / math.sqrt(pulls)
    assert ((estimate - exact).abs() < 4 * standard_error).all(), (estimate, exact, standard_error)
    assert (exact.abs() > 4 * standard_error).any()  # the test can tell a wrong sign or scale


def test_gaussian_and_categorical_maths():
    generator = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator) * 0.3
    normal = torch.distributions.Normal(mean, log_std.exp())
    policy = GaussianMLPPolicy(Spaces(2, "continuous", 3, action_scale=0.5))
    actions = torch.randn(5, 3, generator=generator)
    torch.testing.assert_close(policy.actions.log_prob((mean, log_std), actions), normal.log_prob(actions).sum(-1))
    other = torch.distributions.Normal(mean + 0.1, (log_std - 0.2).exp())
    torch.testing.assert_close(policy.actions.kl((mean, log_std), (mean + 0.1, log_std - 0.2)),
                               torch.distributions.kl_divergence(normal, other).sum(-1))
    torch.testing.assert_close(policy.actions.entropy((mean, log_std)), normal.entropy().sum(-1))
    logits, new = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    categorical = CategoricalMLPPolicy(Spaces(2, "discrete", 4)).actions
    torch.testing.assert_close(categorical.kl(logits, new), torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=logits), torch.distributions.Categorical(logits=new)))
    # inverse-CDF sampling with uniforms reproduces the probabilities
    uniforms = torch.rand(100_000, 1, generator=generator, dtype=torch.float64)
    samples = categorical.sample(logits[0].expand(100_000, 4), uniforms)
    torch.testing.assert_close(torch.bincount(samples, minlength=4) / 1e5, torch.softmax(logits[0], 0),
                               atol=0.01, rtol=0, check_dtype=False)


@pytest.mark.parametrize("actions", [GaussianMLPPolicy(Spaces(2, "continuous", 3)).actions,
                                     CategoricalMLPPolicy(Spaces(2, "discrete", 4)).actions])
def test_action_noise_is_made_on_the_seeds_device(actions):
    """A GPU rollout once failed: the Gaussian noise's per-dimension counter was a CPU tensor. The "meta" device
    checks devices as CUDA does, so this catches a CPU-only tensor without a GPU."""
    seeds, steps = torch.arange(6, device="meta").reshape(2, 3), torch.arange(5, device="meta")
    assert actions.noise(seeds, steps).device.type == "meta"


def test_policies_refuse_the_wrong_action_space():
    continuous, discrete = Navigation2DTasks().spaces, BanditTasks().spaces
    with pytest.raises(ValueError, match="categorical policy needs discrete actions"):
        CategoricalMLPPolicy(continuous)
    with pytest.raises(ValueError, match="Gaussian policy needs continuous actions"):
        GaussianMLPPolicy(discrete)
    assert isinstance(mlp_policy(continuous), GaussianMLPPolicy) and isinstance(mlp_policy(discrete),
                                                                                CategoricalMLPPolicy)


def test_recurrent_policy_replays_its_rollout_and_carries_memory_across_episodes():
    tasks = TabularMDPTasks(states=4, actions=3, horizon=5, episodes=3).fixed_tasks(2)
    policy = RecurrentPolicy(tasks.env.spaces, hidden_size=16)
    episodes = rollout(tasks.env, policy, tasks.trajectory_seeds(3, 0))
    assert episodes.observations.shape == (2, 3, 15, 4) and episodes.dones[..., 4::5].eq(1).all()
    dist, values = replay(policy, episodes)
    torch.testing.assert_close(policy.actions.log_prob(dist, episodes.actions), episodes.log_probs)
    torch.testing.assert_close(values, episodes.values)
    # the hidden state is not reset between episodes: a policy whose hidden state were reset would see the
    # same inputs at the start of episodes 2 and 3 (state 0, done flag) but different rewards before them
    assert not torch.allclose(dist[:, :, 5], dist[:, :, 10])


def test_conjugate_gradient_solves_a_positive_definite_system():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    matrix = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: matrix @ v, b, iterations=12),
                               torch.linalg.solve(matrix, b))


def _trpo_problem(max_kl):
    tasks = Navigation2DTasks(horizon=20).fixed_tasks(4, "val")
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(tasks.env.spaces, (32, 32))
    episodes = rollout(tasks.env, policy, tasks.trajectory_seeds(8, 0))
    advantages = normalize_per_task(discounted_returns(episodes.rewards, 0.99), episodes.masks)
    with torch.no_grad():
        old = policy.actions.detach(policy(episodes.observations))

    def loss_and_kl():
        dist = policy(episodes.observations)
        loss = surrogate_loss(policy.actions.log_prob(dist, episodes.actions), episodes.log_probs, advantages,
                              episodes.masks).mean()
        kl = masked_mean_per_task(policy.actions.kl(old, dist), episodes.masks).mean()
        return loss, kl

    return policy, loss_and_kl


@pytest.mark.parametrize("max_kl", [1e-3, 1e-2])
def test_a_trpo_step_improves_the_surrogate_within_the_kl_bound(max_kl):
    policy, loss_and_kl = _trpo_problem(max_kl)
    before = [p.detach().clone() for p in policy.parameters()]
    info = trpo_step(list(policy.parameters()), loss_and_kl, TRPOSettings(max_kl=max_kl))
    with torch.no_grad():
        loss, kl = loss_and_kl()
    assert info["backtracks"] < 15 and loss.item() == pytest.approx(info["loss_after"])
    assert loss < info["loss_before"]
    assert 0 < kl <= max_kl
    assert kl > 0.2 * max_kl  # the step uses the trust region rather than crawling
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def test_trpo_keeps_the_parameters_when_no_step_qualifies():
    policy, loss_and_kl = _trpo_problem(1e-2)
    before = [p.detach().clone() for p in policy.parameters()]
    trpo_step(list(policy.parameters()), lambda: (loss_and_kl()[0], loss_and_kl()[1] + 1.0), TRPOSettings())
    assert all(torch.equal(b, p) for b, p in zip(before, policy.parameters()))
    with pytest.raises(ValueError, match="max_kl"):
        TRPOSettings(max_kl=0)
