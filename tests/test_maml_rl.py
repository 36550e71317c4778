"""MAML-RL: the vmapped meta-gradient against a per-task reference loop, TRPO on the meta-objective,
adaptation, the pretrained baseline, determinism and bad input."""
import pytest
import torch
from torch.func import functional_call

from fastadapt.algorithms import MAMLRL, MetaSGDRL, PretrainedPolicy
from fastadapt.models.policies import GaussianMLPPolicy, RecurrentPolicy
from fastadapt.rl import TRPOSettings
from fastadapt.tasks.mdp import BanditTasks, Navigation2DTasks


# Rollouts, inner steps and small GRUs are many tiny tensor operations: extra threads only add contention.
pytestmark = pytest.mark.usefixtures("one_thread")


def _learner(first_order=False, inner_steps=1, dtype=torch.float64, method=MAMLRL, **options):
    torch.manual_seed(0)
    tasks = Navigation2DTasks(horizon=12, dtype=dtype).fixed_tasks(3, "val")
    policy = GaussianMLPPolicy(tasks.env.spaces, (16, 16)).to(dtype)
    return method(policy, inner_lr=0.3, inner_steps=inner_steps, trajectories=4, first_order=first_order,
                  **options), tasks


def _rounds(learner, tasks):
    """The data of one meta-update: pre-update rounds and the post-update trajectories."""
    rounds, params = [], None
    for round_ in range(learner.inner_steps):
        episodes = learner.sample(tasks, round_, params)
        rounds.append((episodes, learner.advantages(episodes)))
        params = learner.adapted(rounds, first_order=True)
    final = learner.sample(tasks, learner.inner_steps, params)
    with torch.no_grad():
        old = learner.policy.actions.detach(learner.policy.distribution(final.observations, params))
    return rounds, final, learner.advantages(final), old


def _reference_meta_loss(learner, rounds, final, final_advantages, first_order):
    """What most public code writes: a Python loop over tasks, autograd.grad(create_graph=True) per task."""
    policy, theta = learner.policy, dict(learner.policy.named_parameters())
    losses = []
    for task in range(final.rewards.shape[0]):
        params = theta
        for episodes, advantages in rounds:
            dist = functional_call(policy, params, (episodes.observations[task],))
            log_probs = policy.actions.log_prob(dist, episodes.actions[task])
            mask = episodes.masks[task]
            inner = -(log_probs * advantages[task] * mask).sum() / mask.sum()
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=not first_order)
            params = {name: p - learner.inner_lr * g for (name, p), g in zip(params.items(), grads)}
        dist = functional_call(policy, params, (final.observations[task],))
        ratio = torch.exp(policy.actions.log_prob(dist, final.actions[task]) - final.log_probs[task])
        mask = final.masks[task]
        losses.append(-(ratio * final_advantages[task] * mask).sum() / mask.sum())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("first_order,inner_steps", [(False, 1), (False, 2), (True, 1)])
def test_meta_gradient_equals_a_per_task_reference_loop_in_float64(first_order, inner_steps):
    learner, tasks = _learner(first_order, inner_steps)
    rounds, final, final_advantages, old = _rounds(learner, tasks)
    parameters = list(learner.policy.parameters())
    ours, kl = learner.surrogate_and_kl(rounds, final, final_advantages, old)
    reference = _reference_meta_loss(learner, rounds, final, final_advantages, first_order)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert kl.abs().item() < 1e-12  # at theta_old the post-update policies are the ones that sampled
    ours_grad = torch.autograd.grad(ours, parameters)
    reference_grad = torch.autograd.grad(reference, parameters)
    for a, b in zip(ours_grad, reference_grad):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if not first_order:  # the second-order term is really there
        first, _ = _learner(True, inner_steps)
        first_grad = torch.autograd.grad(_reference_meta_loss(first, rounds, final, final_advantages, True),
                                         list(first.policy.parameters()))
        assert max((a - b).abs().max().item() for a, b in zip(ours_grad, first_grad)) > 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_metasgd_rl_starts_as_maml_and_its_step_size_gradient_matches_finite_differences(first_order):
    maml, tasks = _learner(first_order)
    learner, _ = _learner(first_order, method=MetaSGDRL)
    rounds, final, final_advantages, old = _rounds(learner, tasks)
    ours = learner.surrogate_and_kl(rounds, final, final_advantages, old)[0]
    torch.testing.assert_close(ours, maml.surrogate_and_kl(rounds, final, final_advantages, old)[0],
                               rtol=1e-12, atol=1e-12)  # every learned step size starts at alpha
    rates = list(learner.inner_rates.values())
    gradient = torch.autograd.grad(ours, rates)
    directions = [torch.randn_like(rate) for rate in rates]
    analytic = sum((g * d).sum() for g, d in zip(gradient, directions))
    with torch.no_grad():
        def loss_at(shift):
            for rate, direction in zip(rates, directions):
                rate.add_(shift * direction)
            value = learner.surrogate_and_kl(rounds, final, final_advantages, old)[0]
            for rate, direction in zip(rates, directions):
                rate.sub_(shift * direction)
            return value
        numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
    assert analytic.abs() > 1e-4  # the step sizes do move the meta-objective
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_metasgd_rl_meta_update_trains_the_step_sizes_and_scales_them_at_test_time():
    learner, tasks = _learner(dtype=torch.float32, method=MetaSGDRL, eval_inner_lrs=[0.3, 0.15])
    metrics = learner.meta_update(tasks)
    assert 0 < metrics["kl"] <= 0.01
    rates = learner.step_sizes(0.3)
    assert set(rates) == {name for name, _ in learner.policy.named_parameters()}
    assert any(not torch.allclose(rate, torch.full_like(rate, 0.3)) for rate in rates.values())
    halved = learner.step_sizes(learner.eval_lr(1))
    assert all(torch.allclose(halved[name], rates[name] / 2) for name in rates)
    assert any(key.startswith("inner_rates.") for key in learner.state_dict())  # checkpointed with the policy


def test_meta_update_is_a_trpo_step_within_the_kl_bound_and_deterministic():
    learner, tasks = _learner(dtype=torch.float32, trpo=TRPOSettings(max_kl=0.01))
    twin, _ = _learner(dtype=torch.float32, trpo=TRPOSettings(max_kl=0.01))
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    metrics = learner.meta_update(tasks)
    assert 0 < metrics["kl"] <= 0.01 and metrics["surrogate_gain"] > 0 and metrics["backtracks"] < 15
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert twin.meta_update(tasks) == metrics
    assert all(torch.equal(a, b) for a, b in zip(learner.state_dict().values(), twin.state_dict().values()))


def test_curvature_on_a_share_of_the_tasks_still_respects_the_full_kl_bound():
    learner, tasks = _learner(dtype=torch.float32, trpo=TRPOSettings(max_kl=0.005, curvature_fraction=0.34))
    metrics = learner.meta_update(tasks)
    assert 0 < metrics["kl"] <= 0.005 and metrics["surrogate_gain"] > 0


def test_adaptation_steps_use_fresh_trajectories_and_the_evaluation_step_sizes():
    learner, tasks = _learner(dtype=torch.float32, eval_inner_lrs=[0.3, 0.15])
    params, history = learner.adapt(tasks, 3)
    assert len(history) == 4 and params["log_std"].shape[0] == 3
    assert not torch.equal(history[0].actions, history[1].actions)
    assert [learner.eval_lr(k) for k in range(3)] == [0.3, 0.15, 0.15]
    returns = learner.evaluate_returns(tasks, [0, 3])
    assert set(returns) == {0, 3} and returns[0].shape == (3,)
    torch.testing.assert_close(returns[3], history[3].returns.mean(1))  # the same seeded rollouts


def test_pretrained_policy_trains_without_adaptation_and_adapts_at_test_time():
    torch.manual_seed(0)
    tasks = Navigation2DTasks(horizon=12).fixed_tasks(3)
    learner = PretrainedPolicy(GaussianMLPPolicy(tasks.env.spaces, (16,)), trajectories=4)
    metrics = learner.meta_update(tasks)
    assert "return_pre_update" not in metrics and metrics["kl"] <= 0.01
    assert set(learner.evaluate_returns(tasks, [0, 1])) == {0, 1}
    with pytest.raises(ValueError, match="inner_steps to 0"):
        PretrainedPolicy(GaussianMLPPolicy(tasks.env.spaces, (16,)), inner_steps=1)


class _NaNRewards(Navigation2DTasks):
    def _env(self, num_tasks, generator):
        env = super()._env(num_tasks, generator)
        env.goals[0] = float("nan")
        return env


def test_bad_input_is_a_one_line_error():
    tasks = Navigation2DTasks(horizon=5)
    policy = GaussianMLPPolicy(tasks.spaces, (8,))
    with pytest.raises(ValueError, match="recurrent policy is RL"):
        MAMLRL(RecurrentPolicy(tasks.spaces, 8))
    with pytest.raises(ValueError, match="inner_lr"):
        MAMLRL(policy, inner_lr=0)
    with pytest.raises(ValueError, match="trajectories"):
        MAMLRL(policy, trajectories=1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        MAMLRL(policy, trajectories=2).meta_update(_NaNRewards(horizon=5).fixed_tasks(2))
    with pytest.raises(ValueError, match="steps must be >= 0"):
        MAMLRL(policy, trajectories=2).evaluate_returns(tasks.fixed_tasks(2), [-1])


def test_discrete_tasks_work_with_a_categorical_policy():
    from fastadapt.models.policies import mlp_policy

    tasks = BanditTasks(arms=3, pulls=5).fixed_tasks(2)
    learner = MAMLRL(mlp_policy(tasks.env.spaces, (8,)), trajectories=4)
    assert learner.meta_update(tasks)["kl"] <= 0.01
