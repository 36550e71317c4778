"""Environments: gymnasium's checker, batched == gymnasium trajectories, counter-based noise, task families."""
import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import fastadapt.environments as environments
from fastadapt.environments import noise
from fastadapt.rl.rollout import ENV_STREAM
from fastadapt.tasks.mdp import BanditTasks, MDPBatch, Navigation2DTasks, TabularMDPTasks


@pytest.mark.parametrize("name", sorted(environments.GYMNASIUM_IDS))
def test_every_registered_environment_passes_gymnasiums_checker(name):
    check_env(gymnasium.make(name).unwrapped, skip_render_check=True)


def test_oracle_navigation_passes_the_checker_and_observes_the_goal():
    env = gymnasium.make("fastadapt/Navigation2D-v0", observe_goal=True).unwrapped
    check_env(env, skip_render_check=True)
    observation, info = env.reset(seed=3)
    np.testing.assert_array_equal(observation[2:], info["goal"].astype(np.float32))


def _gym_trajectories(make_env, seeds, actions, options, episodes):
    """Step one gymnasium env per seed with the given actions; collect (obs, reward, terminated) per step."""
    out = []
    for index, seed in enumerate(seeds):
        env = make_env()
        rows = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed, options=options(index)) if episode == 0 else env.reset()
            for t in range(actions.shape[1] // episodes):
                step = episode * (actions.shape[1] // episodes) + t
                obs, reward, terminated, truncated, _ = env.step(actions[index, step])
                rows.append((obs, reward, terminated))
        out.append(rows)
    return out


def _batched_trajectories(env, seeds, actions, episodes):
    rows = []
    for episode in range(episodes):
        env.reset(seeds[None] if episode == 0 else None)
        for t in range(actions.shape[1] // episodes):
            obs, reward, terminated = env.step(actions[None, :, episode * (actions.shape[1] // episodes) + t])
            rows.append((obs[0], reward[0], terminated[0]))
    return rows


def test_batched_navigation_equals_gymnasium_for_the_same_actions():
    goal = torch.tensor([[0.31, -0.27]], dtype=torch.float64)
    env = environments.BatchedNavigation2D(goal, horizon=30)
    actions = 0.15 * torch.randn(5, 30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    actions[2, :3] = torch.tensor([0.1, -0.09], dtype=torch.float64)  # within 0.01 of the goal after 3 steps
    gym_envs = [environments.Navigation2DEnv(horizon=30) for _ in range(5)]
    for seed, gym_env in enumerate(gym_envs):
        gym_env.reset(seed=seed, options={"goal": goal[0].numpy()})
    env.reset(torch.arange(5)[None])
    terminations = []
    for t in range(30):
        obs, rewards, terminated = env.step(actions[None, :, t])
        for i, gym_env in enumerate(gym_envs):
            gym_obs, gym_reward, gym_terminated, gym_truncated, _ = gym_env.step(actions[i, t].numpy())
            np.testing.assert_array_equal(env.positions[0, i].numpy(), gym_env.position)  # float64, bit for bit
            np.testing.assert_array_equal(obs[0, i].numpy().astype(np.float32), gym_obs)
            # torch.sqrt on CPU is not always correctly rounded (NumPy's is): the distance may differ in the last bit
            assert rewards[0, i].item() == pytest.approx(gym_reward, rel=3e-16, abs=0)
            assert terminated[0, i].item() == gym_terminated
            assert gym_truncated == (t == 29 and not gym_terminated)
            if gym_terminated:
                terminations.append((i, t))
    assert terminations[0] == (2, 2)


def test_batched_bandit_equals_gymnasium_over_several_episodes():
    p = torch.tensor([[0.2, 0.5, 0.9]], dtype=torch.float64)
    env = environments.BatchedBernoulliBandit(p, horizon=12)
    actions = torch.randint(0, 3, (4, 24), generator=torch.Generator().manual_seed(1))
    seeds = torch.tensor([5, 6, 7, 2**32 - 1])
    batched = _batched_trajectories(env, seeds, actions, 2)
    gym = _gym_trajectories(lambda: environments.BernoulliBanditEnv(arms=3, pulls=12), seeds.tolist(),
                            actions.numpy(), lambda i: {"probabilities": p[0].numpy()}, 2)
    rewards = torch.stack([r for _, r, _ in batched], 1)
    assert rewards.tolist() == [[r for _, r, _ in rows] for rows in gym]
    assert 0 < rewards.mean() < 1  # both outcomes occur


def test_batched_tabular_mdp_equals_gymnasium_over_several_episodes():
    tasks = TabularMDPTasks(states=4, actions=3, horizon=6, episodes=2, dtype=torch.float64).fixed_tasks(1, "val")
    env = tasks.env
    actions = torch.randint(0, 3, (5, 12), generator=torch.Generator().manual_seed(2))
    seeds = torch.arange(10, 15)
    batched = _batched_trajectories(env, seeds, actions, 2)
    make = lambda: environments.TabularMDPEnv(states=4, actions=3, horizon=6)  # noqa: E731
    task = {"transitions": env.transitions[0].numpy(), "reward_means": env.reward_means[0].numpy()}
    gym = _gym_trajectories(make, seeds.tolist(), actions.numpy(), lambda i: task, 2)
    states = [[int(obs[i].argmax()) for obs, _, _ in batched] for i in range(5)]
    assert states == [[obs for obs, _, _ in rows] for rows in gym]
    assert len({s for row in states for s in row}) > 1  # the chain moves
    rewards = torch.stack([r for _, r, _ in batched], 1)
    # same draws; Box-Muller's log/cos may differ in the last bit between a scalar and a vector kernel
    torch.testing.assert_close(rewards, torch.tensor([[r for _, r, _ in rows] for rows in gym], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_a_tasks_trajectories_do_not_depend_on_the_rest_of_the_batch():
    tasks = BanditTasks(arms=4, pulls=20).fixed_tasks(6)
    seeds = tasks.trajectory_seeds(3, 0)
    actions = torch.randint(0, 4, (6, 3, 20), generator=torch.Generator().manual_seed(0))

    def rewards(batch: MDPBatch, seeds, actions):
        batch.env.reset(noise.derive_seeds(seeds, ENV_STREAM))
        return torch.stack([batch.env.step(actions[:, :, t])[1] for t in range(20)], -1)

    whole = rewards(tasks, seeds, actions)
    part = rewards(tasks[2:5], seeds[2:5], actions[2:5])
    assert torch.equal(whole[2:5], part)


def test_counter_noise_is_uniform_and_the_same_on_ints_numpy_and_torch():
    u = noise.uniform(torch.arange(40_000), 7).numpy()
    assert abs(u.mean() - 0.5) < 0.006 and abs(u.var() - 1 / 12) < 0.002
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    chi2 = ((counts - 2_000) ** 2 / 2_000).sum()
    assert chi2 < 43.8  # 99.9% quantile of chi-square with 19 degrees of freedom
    neighbours = np.corrcoef(noise.uniform(torch.arange(40_000), 0).numpy(),
                             noise.uniform(torch.arange(40_000), 1).numpy())[0, 1]
    assert abs(neighbours) < 0.02
    assert noise.mix(123, 4, 5) == int(noise.mix(np.int64(123), np.int64(4), np.int64(5))) == \
        int(noise.mix(torch.tensor(123), 4, 5))
    z = noise.normal(torch.arange(40_000), 3).numpy()
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03


def test_task_families_sample_reproducibly_and_fixed_splits_differ():
    for family in (Navigation2DTasks(), BanditTasks(5, 10), TabularMDPTasks()):
        a, b = family.fixed_tasks(4, "test"), family.fixed_tasks(4, "test")
        c = family.fixed_tasks(4, "val")
        assert torch.equal(a.seeds, b.seeds) and not torch.equal(a.seeds, c.seeds)
    goals = Navigation2DTasks().sample(1000, torch.Generator().manual_seed(0)).env.goals
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.25
    mdp = TabularMDPTasks().sample(200, torch.Generator().manual_seed(0)).env
    torch.testing.assert_close(mdp.transitions.sum(-1), torch.ones(200, 10, 5))
    assert abs(mdp.reward_means.mean() - 1) < 0.05 and abs(mdp.reward_means.std() - 1) < 0.05


def test_bad_environment_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="horizon must be a positive"):
        Navigation2DTasks(horizon=0)
    with pytest.raises(ValueError, match="horizon"):
        environments.Navigation2DEnv(horizon=-3)
    with pytest.raises(ValueError, match="at least 2 arms"):
        BanditTasks(arms=1)
    with pytest.raises(ValueError, match="pulls"):
        BanditTasks(pulls=0)
    with pytest.raises(ValueError, match="episodes"):
        TabularMDPTasks(episodes=0)
    with pytest.raises(ValueError, match="reachable"):
        environments.Navigation2DEnv(goal=(50.0, 0.0))
