"""RL^2 with PPO, and the hand-designed bandit algorithms it is compared with."""
import pytest
import torch

from fastadapt.algorithms import RL2, UCB1, BayesOptimal, RandomArms, ThompsonSampling
from fastadapt.environments import BatchedBernoulliBandit
from fastadapt.models.policies import GaussianMLPPolicy, RecurrentPolicy
from fastadapt.tasks.mdp import BanditTasks, MDPBatch, Navigation2DTasks, TabularMDPTasks


# Rollouts, inner steps and small GRUs are many tiny tensor operations: extra threads only add contention.
pytestmark = pytest.mark.usefixtures("one_thread")


def _rl2(tasks_family, hidden=16, lr=3e-3, **options):
    torch.manual_seed(0)
    policy = RecurrentPolicy(tasks_family.spaces, hidden)
    return RL2(policy, **options), torch.optim.Adam(policy.parameters(), lr=lr)


def test_rl2_learns_to_exploit_a_two_armed_bandit():
    """One arm always pays, the other never, which arm varies by task: the GRU must find out and stick to it.
    A random policy earns half of the 4 pulls, the best one 3.5; after 22 PPO updates RL^2 earns clearly more
    than half on held-out bandits."""

    class Deterministic(BanditTasks):
        def _env(self, num_tasks, generator):
            good = torch.randint(0, 2, (num_tasks,), generator=generator)
            return BatchedBernoulliBandit(torch.nn.functional.one_hot(good, 2).float(), self.pulls)

    family = Deterministic(arms=2, pulls=4)
    learner, optimizer = _rl2(family, hidden=16, lr=1e-2, epochs=4, minibatches=1, gae_lambda=0.95)
    test = family.fixed_tasks(200)
    before = learner.evaluate_returns(test)[None].mean().item()
    generator = torch.Generator().manual_seed(0)
    for _ in range(22):
        metrics = learner.meta_update(family.sample(128, generator), optimizer)
    after = learner.evaluate_returns(test)[None].mean().item()
    assert before < 2.3 and after > 3.0, (before, after)
    assert set(metrics) >= {"return", "policy_loss", "value_loss", "entropy", "approx_kl"}


def test_rl2_update_is_deterministic_and_runs_multi_episode_trials():
    family = TabularMDPTasks(states=3, actions=2, horizon=3, episodes=2)
    tasks = family.fixed_tasks(4)
    results = []
    for _ in range(2):
        learner, optimizer = _rl2(family, trials=2, epochs=2, minibatches=2)
        metrics = learner.meta_update(tasks, optimizer)
        results.append((metrics, [p.detach().clone() for p in learner.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    assert learner.evaluate_returns(tasks)[None].shape == (4,)


def test_rl2_bad_input():
    family = BanditTasks(arms=3, pulls=4)
    with pytest.raises(ValueError, match="recurrent policy"):
        RL2(GaussianMLPPolicy(Navigation2DTasks().spaces))
    learner, _ = _rl2(family)
    with pytest.raises(ValueError, match="needs an optimizer"):
        learner.meta_update(family.fixed_tasks(2))
    with pytest.raises(ValueError, match="clip"):
        RL2(RecurrentPolicy(family.spaces, 4), clip=1.5)


def test_bandit_baselines_on_bandits_with_a_known_best_arm():
    p = torch.tensor([[0.1, 0.2, 0.9, 0.3]]).repeat(50, 1)
    tasks = MDPBatch(BatchedBernoulliBandit(p, horizon=100), torch.arange(50))
    random = RandomArms().evaluate_returns(tasks)[None].mean().item()
    assert abs(random - 100 * p[0].mean().item()) < 3  # a random arm pays the mean probability
    for algorithm in (UCB1(), ThompsonSampling()):
        total = algorithm.evaluate_returns(tasks)[None].mean().item()
        assert total > 0.8 * 100 * 0.9, (type(algorithm).__name__, total)  # mostly the 0.9 arm
    assert torch.equal(ThompsonSampling().evaluate_returns(tasks)[None],
                       ThompsonSampling().evaluate_returns(tasks)[None])
    with pytest.raises(ValueError, match="nothing to train"):
        UCB1().meta_update(tasks)
    with pytest.raises(ValueError, match="plays Bernoulli bandits"):
        UCB1().evaluate_returns(TabularMDPTasks().fixed_tasks(2))


def test_bayes_optimal_bandit_values_and_its_size_limit():
    start = lambda arms: tuple([(0, 0)] * arms)  # noqa: E731
    assert BayesOptimal.value(start(2), 1) == pytest.approx(0.5)
    # pull an arm; on a success (1/2) its posterior mean 2/3 keeps it, on a failure the other arm's 1/2 is pulled
    assert BayesOptimal.value(start(2), 2) == pytest.approx(0.5 * (1 + 2 / 3) + 0.5 * 0.5)
    assert BayesOptimal.value(start(5), 10) > BayesOptimal.value(start(5), 9) + 0.6  # more pulls, more reward
    tasks = BanditTasks(arms=3, pulls=6).fixed_tasks(200)
    optimal = BayesOptimal().evaluate_returns(tasks)[None].mean()
    assert optimal >= ThompsonSampling().evaluate_returns(tasks)[None].mean() - 0.1
    with pytest.raises(ValueError, match="too large"):
        BayesOptimal().evaluate_returns(BanditTasks(arms=10, pulls=100).fixed_tasks(2))
