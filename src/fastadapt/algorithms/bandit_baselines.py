"""Hand-designed bandit algorithms RL^2 is compared with (Duan et al. 2016, Table 1): random, UCB1 and
Thompson sampling. Nothing is meta-trained; each plays every test bandit for its trial of n pulls, with the
same reward noise an RL^2 policy meets there (the environment's counter-based draws from the task's seed).

* random: a uniformly random arm every pull (the floor);
* UCB1 (Auer et al. 2002): each arm once, then the arm maximising mean + c sqrt(2 ln t / n_a); c = 1 is
  Auer et al.'s, RL^2's authors tuned it (we choose c on validation bandits, never on the test ones);
* Thompson sampling (Thompson 1933) with a uniform Beta(1, 1) prior: draw p_a ~ Beta(1 + successes,
  1 + failures) for every arm, pull the largest. Its Beta draws come from torch's generator, seeded from the
  tasks' seeds, so a result is reproducible for the same batch of tasks;
* Bayes-optimal (small bandits only): the policy that maximises the expected total reward of the trial under
  the true prior (independent U[0, 1] arms), by dynamic programming over the arms' (successes, failures)
  counts. It is the ceiling any meta-learner can reach on average. The paper's Gittins index is optimal for
  an infinite discounted horizon, not for n pulls; the exact finite-horizon optimum replaces it here, for the
  settings where the DP is small enough (arms x pulls <= 60).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from fastadapt.algorithms.base import RLMetaLearner
from fastadapt.algorithms.spec import MethodSpec
from fastadapt.environments import BatchedBernoulliBandit
from fastadapt.environments.noise import derive_seeds, uniform
from fastadapt.options import NON_NEGATIVE, Options, check_option, setting
from fastadapt.rl.rollout import ENV_STREAM, POLICY_STREAM
from fastadapt.tasks.mdp import MDPBatch


class BanditAlgorithm(RLMetaLearner):
    """Base: plays one trial per task with ``choose``; has nothing to train."""

    uses_optimizer = False

    def meta_update(self, tasks: MDPBatch, optimizer=None) -> dict[str, float]:
        raise ValueError(f"{type(self).__name__} is a fixed bandit algorithm with nothing to train: "
                         "run it with --iterations 0 to evaluate it")

    def choose(self, counts: torch.Tensor, successes: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """The arm of every (task, trial) at pull t, from pull counts and successes per arm (..., arms)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate_returns(self, tasks: MDPBatch, steps: list[int] | None = None) -> dict[int | None, torch.Tensor]:
        env = tasks.env
        if not isinstance(env, BatchedBernoulliBandit):
            raise ValueError(f"{type(self).__name__} plays Bernoulli bandits, not {type(env).__name__} tasks")
        seeds = tasks.trajectory_seeds(1, 0)
        env.reset(derive_seeds(seeds, ENV_STREAM))
        policy_seeds = derive_seeds(seeds, POLICY_STREAM)
        counts = env.probabilities.new_zeros(*seeds.shape, env.spaces.action_size)
        successes, total = torch.zeros_like(counts), torch.zeros_like(counts[..., 0])
        for t in range(env.horizon):
            arms = self.choose(counts, successes, t, uniform(policy_seeds, t).to(counts.dtype))
            _, rewards, _ = env.step(arms)
            counts.scatter_add_(-1, arms[..., None], torch.ones_like(rewards[..., None]))
            successes.scatter_add_(-1, arms[..., None], rewards[..., None])
            total += rewards
        return {None: total.mean(1)}


class RandomArms(BanditAlgorithm):
    def choose(self, counts, successes, t, noise):
        return (noise * counts.shape[-1]).long().clamp(max=counts.shape[-1] - 1)


@dataclass(frozen=True)
class UCBOptions(Options):
    """UCB1's one option."""

    ucb_exploration: float = setting(1.0, "ucb1: exploration coefficient c (1: Auer et al.'s)", rule=NON_NEGATIVE)


class UCB1(BanditAlgorithm):
    def __init__(self, exploration: float = 1.0) -> None:
        super().__init__()
        check_option(UCBOptions, "ucb_exploration", exploration)
        self.exploration = exploration

    def choose(self, counts, successes, t, noise):
        arms = counts.shape[-1]
        if t < arms:
            return torch.full(counts.shape[:-1], t, dtype=torch.long, device=counts.device)
        index = successes / counts + self.exploration * torch.sqrt(2 * math.log(t) / counts)
        return index.argmax(-1)


class ThompsonSampling(BanditAlgorithm):
    @torch.no_grad()
    def evaluate_returns(self, tasks: MDPBatch, steps: list[int] | None = None) -> dict[int | None, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(tasks.seeds.sum()))
            return super().evaluate_returns(tasks, steps)

    def choose(self, counts, successes, t, noise):
        samples = torch.distributions.Beta(1 + successes, 1 + counts - successes).sample()
        return samples.argmax(-1)


#: The Bayes-optimal DP enumerates multisets of per-arm counts; beyond this arms x pulls it is too large.
BAYES_OPTIMAL_LIMIT = 60


class BayesOptimal(BanditAlgorithm):
    """Pulls the arm with the largest expected total reward to go, under independent U[0, 1] priors."""

    @staticmethod
    @lru_cache(maxsize=None)
    def value(counts: tuple[tuple[int, int], ...], pulls_left: int) -> float:
        """Expected reward of the optimal policy from per-arm (successes, failures), sorted (arms are exchangeable)."""
        if pulls_left == 0:
            return 0.0
        return max(BayesOptimal.action_value(counts, arm, pulls_left) for arm in range(len(counts)))

    @staticmethod
    def action_value(counts: tuple[tuple[int, int], ...], arm: int, pulls_left: int) -> float:
        s, f = counts[arm]
        p = (s + 1) / (s + f + 2)  # posterior mean of a Beta(1 + s, 1 + f)
        win = tuple(sorted(counts[:arm] + ((s + 1, f),) + counts[arm + 1 :]))
        lose = tuple(sorted(counts[:arm] + ((s, f + 1),) + counts[arm + 1 :]))
        return p * (1 + BayesOptimal.value(win, pulls_left - 1)) + (1 - p) * BayesOptimal.value(lose, pulls_left - 1)

    @torch.no_grad()
    def evaluate_returns(self, tasks: MDPBatch, steps: list[int] | None = None) -> dict[int | None, torch.Tensor]:
        env = tasks.env
        if isinstance(env, BatchedBernoulliBandit) and env.spaces.action_size * env.horizon > BAYES_OPTIMAL_LIMIT:
            raise ValueError(f"the Bayes-optimal policy is computed by a DP that is too large for "
                             f"{env.spaces.action_size} arms x {env.horizon} pulls (limit: arms x pulls <= "
                             f"{BAYES_OPTIMAL_LIMIT}); use ucb1 or thompson")
        self.horizon = env.horizon
        return super().evaluate_returns(tasks, steps)

    def choose(self, counts, successes, t, noise):
        arms = []
        for row_counts, row_successes in zip(counts.reshape(-1, counts.shape[-1]).tolist(),
                                             successes.reshape(-1, counts.shape[-1]).tolist()):
            per_arm = tuple((int(s), int(n - s)) for n, s in zip(row_counts, row_successes))
            values = [self.action_value(per_arm, arm, self.horizon - t) for arm in range(len(per_arm))]
            arms.append(max(range(len(values)), key=values.__getitem__))
        return torch.tensor(arms, device=counts.device).reshape(counts.shape[:-1])


def _bandit(name: str, cls: type[BanditAlgorithm], build=None, options: tuple[type, ...] = ()) -> MethodSpec:
    return MethodSpec(name, cls, build or (lambda context: cls()), options, rl=True, bandit=True)


SPECS = (
    _bandit("random-arms", RandomArms),
    _bandit("ucb1", UCB1, lambda context: UCB1(context.cfg.method.ucb_exploration), (UCBOptions,)),
    _bandit("thompson", ThompsonSampling),
    _bandit("bayes-optimal", BayesOptimal),
)
