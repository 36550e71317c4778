"""MuJoCo locomotion families: gymnasium compliance, reward formulas on hand-set states, identical rollouts through
the vector API for any number of worker processes (whole trajectories in the workers, or lock step), and what
happens when a worker dies or Ctrl-C arrives."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco", reason="the MuJoCo tests need the fastadapt[mujoco] extra")

import gymnasium  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from fastadapt.config.presets import load_preset  # noqa: E402
from fastadapt.config.schema import Config  # noqa: E402
from fastadapt.environments import LOCOMOTION_IDS  # noqa: E402
from fastadapt.environments.parallel import (RolloutWorkerError, RolloutWorkers,  # noqa: E402
                                             close_rollout_workers, rollout_workers)
from fastadapt.models import GaussianMLPPolicy  # noqa: E402
from fastadapt.rl import rollout  # noqa: E402
from fastadapt.rl.rollout import lockstep_rollout  # noqa: E402
from fastadapt.runs.directory import build_learner  # noqa: E402
from fastadapt.tasks import LocomotionTasks  # noqa: E402
from fastadapt.tasks.mdp import LOCOMOTION_FAMILIES  # noqa: E402
from fastadapt.training.builders import build_tasks  # noqa: E402
from fastadapt.training.checkpoint import load_checkpoint  # noqa: E402
from fastadapt.training.trainer import Trainer  # noqa: E402

CHEETAH_ID = "fastadapt/HalfCheetahForwardBackward-v0"


# Rollouts, inner steps and small GRUs are many tiny tensor operations: extra threads only add contention.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def shut_workers_down():
    yield
    close_rollout_workers()


@pytest.mark.parametrize("env_id", sorted(LOCOMOTION_IDS))
def test_every_locomotion_env_passes_check_env_and_matches_its_family(env_id):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    family = next(f for f in LOCOMOTION_FAMILIES.values() if f.env_id == env_id)
    assert env.observation_space.shape == (family.observation_size,)
    assert env.action_space.shape == (family.action_size,)
    assert env.spec.max_episode_steps == 200
    # the task: drawn by the env's own generator from its seed, or set by reset's option
    _, first = env.reset(seed=5)
    _, again = env.reset(seed=5)
    option = env.unwrapped.task_option
    assert np.array_equal(first[option], again[option])
    given = -1.0 if family.goal == "sign" else (1.25 if family.goal == "velocity" else [0.6, -0.8])
    _, info = env.reset(seed=5, options={option: given})
    assert np.allclose(info[option], given)


def _state(env, speed):
    """A hand-set state: the initial pose moving along x at ``speed`` (and the ant also along y)."""
    qpos, qvel = env.init_qpos.copy(), env.init_qvel.copy()
    qvel[0] = speed
    if qvel.size > 1 and env.model.nq == 15:  # the ant: a free joint, so also a sideways velocity
        qvel[1] = -0.5 * speed
    return qpos, qvel


@pytest.mark.parametrize("env_id,task,plain_id", [
    ("fastadapt/HalfCheetahForwardBackward-v0", 1.0, "HalfCheetah-v5"),
    ("fastadapt/HalfCheetahForwardBackward-v0", -1.0, "HalfCheetah-v5"),
    ("fastadapt/HalfCheetahVelocity-v0", 1.5, "HalfCheetah-v5"),
    ("fastadapt/AntForwardBackward-v0", -1.0, "Ant-v5"),
    ("fastadapt/AntDirection-v0", [0.6, 0.8], "Ant-v5"),
])
def test_reward_matches_the_task_formula_on_hand_set_states(env_id, task, plain_id):
    env, plain = gymnasium.make(env_id).unwrapped, gymnasium.make(plain_id).unwrapped
    env.reset(seed=0, options={env.task_option: task})
    plain.reset(seed=0)
    action = np.linspace(-1.6, 1.6, env.action_space.shape[0])  # partly outside [-1, 1]: clipped before use
    clipped = np.clip(action, -1, 1)
    for speed in (2.0, -3.0):
        env.set_state(*_state(env, speed))
        plain.set_state(*_state(plain, speed))
        _, reward, terminated, _, _ = env.step(action)
        _, _, plain_terminated, _, info = plain.step(clipped)  # gymnasium's env gives the velocity and the costs
        assert terminated == plain_terminated
        if plain_id == "HalfCheetah-v5":
            control = 0.05 * np.sum(clipped**2)
            velocity = info["x_velocity"]
            expected = (task * velocity if "Forward" in env_id else -abs(velocity - task)) - control
        else:
            direction = np.array([task, 0.0]) if np.ndim(task) == 0 else np.array(task)
            velocity = np.array([info["x_velocity"], info["y_velocity"]])
            expected = direction @ velocity + 1.0 - 0.5 * np.sum(clipped**2) + info["reward_contact"]
        assert abs(info["x_velocity"]) > 0.1  # the hand-set state really moves
        assert reward == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_a_task_that_is_not_one_of_the_family_is_refused():
    env = gymnasium.make(CHEETAH_ID).unwrapped
    with pytest.raises(ValueError, match="direction must be -1"):
        env.reset(options={"direction": 0.5})
    ant = gymnasium.make("fastadapt/AntDirection-v0").unwrapped
    with pytest.raises(ValueError, match="unit vector"):
        ant.reset(options={"direction": [1.0, 1.0]})


def test_task_draws_follow_each_family_distribution():
    generator = torch.Generator().manual_seed(0)
    for name, family in LOCOMOTION_FAMILIES.items():
        goals = family.draw(400, generator, torch.float64)
        assert goals.shape == (400, family.task_size), name
        if family.goal == "sign":
            assert set(goals.flatten().tolist()) == {-1.0, 1.0}
        elif family.goal == "velocity":
            assert 0 <= goals.min() and goals.max() <= 2 and goals.std() > 0.5
        else:
            assert torch.allclose(goals.norm(dim=-1), torch.ones(400, dtype=torch.float64))
            assert (goals[:, 1] < 0).any() and (goals[:, 0] < 0).any()


@pytest.mark.parametrize("num_tasks", [10, 7])
def test_balanced_meta_batches_hold_both_directions_and_leave_each_task_a_fair_coin(num_tasks):
    family, generator = LOCOMOTION_FAMILIES["halfcheetah-fwd-bwd"], torch.Generator().manual_seed(0)
    batches = torch.stack([family.draw(num_tasks, generator, torch.float64, balanced=True)[:, 0]
                           for _ in range(2000)])
    forward = (batches == 1).sum(1)
    assert set(batches.unique().tolist()) == {-1.0, 1.0}
    assert set(forward.tolist()) == {num_tasks // 2, num_tasks - num_tasks // 2}  # odd: one random sign over
    # every position of the batch is forward half of the time (2000 draws: standard error 0.011)
    assert ((batches == 1).double().mean(0) - 0.5).abs().max() < 0.045
    unbalanced = torch.stack([family.draw(num_tasks, generator, torch.float64)[:, 0] for _ in range(2000)])
    assert ((unbalanced == 1).sum(1) == 0).any()  # an independent batch can be one-sided, a balanced one never


def test_balanced_directions_change_training_batches_only_and_only_for_forward_backward_families():
    balanced = LocomotionTasks("halfcheetah-fwd-bwd", horizon=5, workers=0, balanced_directions=True)
    plain = LocomotionTasks("halfcheetah-fwd-bwd", horizon=5, workers=0)
    for split in ("val", "test"):
        assert torch.equal(balanced.fixed_tasks(9, split).env.tasks, plain.fixed_tasks(9, split).env.tasks)
        assert torch.equal(balanced.fixed_tasks(9, split).seeds, plain.fixed_tasks(9, split).seeds)
    for seed in range(20):
        assert balanced.sample(10, torch.Generator().manual_seed(seed)).env.tasks.sum() == 0
    with pytest.raises(ValueError, match="not ant-direction"):
        LocomotionTasks("ant-direction", workers=0, balanced_directions=True)
    with pytest.raises(ValueError, match="not velocity goals"):
        LOCOMOTION_FAMILIES["halfcheetah-vel"].draw(4, torch.Generator(), torch.float32, balanced=True)
    with pytest.raises(ValueError, match="not nav2d"):
        build_tasks(Config(tasks="nav2d", algorithm="maml-rl", balanced_directions=True))
    assert build_tasks(Config(tasks="ant-fwd-bwd", algorithm="maml-rl", balanced_directions=True,
                              rollout_workers=0)).balanced_directions


def _episodes(workers, tasks=3, trajectories=4, horizon=12, sample=rollout):
    family = LocomotionTasks("halfcheetah-fwd-bwd", horizon=horizon, workers=workers)
    batch = family.fixed_tasks(tasks, "val")
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(family.spaces, (16,))
    return batch, sample(batch.env, policy, batch.trajectory_seeds(trajectories, 0))


def _adapted_weights(policy, tasks):
    """Per-task weights, as MAML's inner step gives them."""
    generator = torch.Generator().manual_seed(1)
    return {name: value.detach() + 0.05 * torch.randn(tasks, *value.shape, generator=generator)
            for name, value in policy.named_parameters()}


def test_fixed_seeds_give_identical_rollouts_through_the_vector_api_for_any_worker_count():
    batch, local = _episodes(workers=0)
    # whole trajectories in 1, 2 or 4 workers (tasks split 3 / 2+1 / 1+1+1, the 4th worker idle), and lock step
    for workers, sample in ((1, rollout), (2, rollout), (4, rollout), (2, lockstep_rollout)):
        _, parallel = _episodes(workers=workers, sample=sample)
        for name in ("observations", "actions", "rewards", "masks", "log_probs", "dones"):
            assert torch.equal(getattr(local, name), getattr(parallel, name)), (workers, sample.__name__, name)
    # ... and equal to the gymnasium environment stepped by hand with the recorded actions and the same seed
    env = gymnasium.make(CHEETAH_ID).unwrapped
    seeds = batch.trajectory_seeds(2, 0)
    from fastadapt.environments.noise import derive_seeds
    from fastadapt.rl.rollout import ENV_STREAM

    env_seed = int(derive_seeds(seeds, ENV_STREAM)[1, 1])
    observation, _ = env.reset(seed=env_seed, options={"direction": float(batch.env.tasks[1, 0])})
    rewards = []
    for action in local.actions[1, 1].double().numpy():
        rewards.append(env.step(action)[1])
    assert np.allclose(observation, local.observations[1, 1, 0].double().numpy(), atol=1e-6)
    assert np.allclose(rewards, local.rewards[1, 1].double().numpy(), rtol=1e-6, atol=1e-5)


def test_workers_sample_with_each_tasks_adapted_weights_exactly_as_this_process_would():
    # 4 trajectories a task, at least: with 2 or 3 rows, this CPU's BLAS rounds a task's small matrix products
    # differently depending on their place in memory (see fastadapt.rl.rollout)
    results = {}
    for workers in (0, 2):
        family = LocomotionTasks("halfcheetah-fwd-bwd", horizon=8, workers=workers)
        batch = family.fixed_tasks(5, "val")
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(family.spaces, (16,))
        results[workers] = rollout(batch.env, policy, batch.trajectory_seeds(4, 0), _adapted_weights(policy, 5))
    for name in ("observations", "actions", "rewards", "log_probs"):
        assert torch.equal(results[0].__dict__[name], results[2].__dict__[name]), name
    # the weights matter: without them the same seeds act otherwise
    assert not torch.equal(results[2].actions, _episodes(workers=2, tasks=5, trajectories=4, horizon=8)[1].actions)


def test_workers_ignore_ctrl_c_and_a_pool_is_reused_across_rollouts():
    _episodes(workers=2)
    pool = rollout_workers(CHEETAH_ID, 2, 6)
    for pid in pool.pids:
        os.kill(pid, signal.SIGINT)  # what a Ctrl-C in the terminal sends to every process of the group
    time.sleep(0.2)
    _, again = _episodes(workers=2)
    assert rollout_workers(CHEETAH_ID, 2, 6) is pool and all(p.is_alive() for p in pool.vector.processes)
    assert torch.isfinite(again.rewards).all()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and 2 CPUs")
def test_each_worker_of_a_pool_is_pinned_to_its_own_core():
    _episodes(workers=2)
    cores = [os.sched_getaffinity(pid) for pid in rollout_workers(CHEETAH_ID, 2, 6).pids]
    assert all(len(core) == 1 for core in cores) and cores[0] != cores[1]
    assert cores[0] | cores[1] <= os.sched_getaffinity(0)


def test_bench_rollout_speed_times_the_worker_counts_in_turn_and_prints_their_ratio(capsys):
    from fastadapt.cli import main

    assert main(["bench", "rollout-speed", "--tasks", "1", "--trajectories", "2", "--horizon", "3", "--repeats", "2",
                 "--workers", "1", "2"]) == 0
    out = capsys.readouterr().out
    rates = [float(line.split()[2].replace(",", "")) for line in out.splitlines() if "environment steps / s" in line]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    assert "2 workers / 1 worker:" in out and "the median over the rounds (range" in out


class KillingPolicy(GaussianMLPPolicy):
    """Kills a rollout worker before its ``at``-th step: worker 0, from this process, when acting here (lock step);
    the worker it runs in, when sampling whole trajectories there. A worker dying mid-rollout either way."""

    def __init__(self, spaces, at):
        super().__init__(spaces, (16,))
        self.at, self.calls = at, 0

    def act(self, observations, memory, params=None):
        self.calls += 1
        if self.calls == self.at:
            if multiprocessing.parent_process() is not None:  # in a rollout worker
                os.kill(os.getpid(), signal.SIGKILL)
            pool = rollout_workers(CHEETAH_ID, 2, 6)
            os.kill(pool.pids[0], signal.SIGKILL)
            pool.vector.processes[0].join(timeout=10)
        return super().act(observations, memory, params)


@pytest.mark.parametrize("sample, during", [(lockstep_rollout, "a step"), (rollout, "a rollout")])
def test_a_worker_killed_mid_rollout_is_a_clear_error_and_the_next_rollout_starts_new_workers(sample, during):
    family = LocomotionTasks("halfcheetah-fwd-bwd", horizon=12, workers=2)
    batch = family.fixed_tasks(3, "val")
    policy = KillingPolicy(family.spaces, at=5)
    with pytest.raises(RolloutWorkerError, match=rf"rollout worker \d \(pid \d+\) was killed by signal SIGKILL "
                                                 rf"during {during}.*--resume"):
        sample(batch.env, policy, batch.trajectory_seeds(2, 0))
    _, local = _episodes(workers=0)
    _, fresh = _episodes(workers=2, sample=sample)  # no deadlock: the broken pool was shut down and a new one starts
    assert torch.equal(local.rewards, fresh.rewards)


def _sleep_in_worker(index, seconds):
    time.sleep(seconds)


def test_a_pool_whose_workers_all_died_during_a_call_closes_without_an_error():
    pool = RolloutWorkers(CHEETAH_ID, 2, 1)
    pool.vector.call_async("run", _sleep_in_worker, 30.0)
    for process in pool.vector.processes:
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=10)
    pool.close(terminate=True)  # gymnasium's own close reads the pending answers from the dead pipes and fails
    assert pool.vector.closed and not any(process.is_alive() for process in pool.vector.processes)


def test_a_run_whose_worker_dies_stops_with_the_error_and_resumes_to_the_uninterrupted_result(tmp_path):
    def cfg(name, workers):
        return Config(algorithm="maml-rl", tasks="halfcheetah-fwd-bwd", horizon=5, trajectories=2,
                      meta_batch_size=2, hidden_sizes=[8], iterations=3, log_every=1, val_every=3,
                      checkpoint_every=1, val_tasks=2, test_tasks=2, rollout_workers=workers,
                      output_dir=str(tmp_path / name)).resolved()

    from fastadapt.runs.directory import train

    _, straight = train(cfg("a", 0), progress=False)
    config = cfg("b", 1)
    tasks = build_tasks(config)
    learner = build_learner(config, tasks)

    def kill_the_worker_after_iteration_2(_):
        if trainer.iteration == 1:  # called before the counter moves: this is the 2nd iteration's update
            pool = rollout_workers(CHEETAH_ID, 1, 4)
            os.kill(pool.pids[0], signal.SIGKILL)
            pool.vector.processes[0].join(timeout=10)

    trainer = Trainer(config, learner, tasks, progress=False, gradient_hook=kill_the_worker_after_iteration_2)
    with pytest.raises(RolloutWorkerError, match="killed by signal SIGKILL"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 2
    _, resumed = train(cfg("b", 1), resume=True, progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_a_tiny_locomotion_run_and_plots_its_curves_and_frames(tmp_path, capsys):
    from fastadapt.cli import main

    run = tmp_path / "cheetah"
    assert main(["train", "rl-halfcheetah-fwd-bwd-maml-cpu", "--iterations", "1", "--horizon", "6",
                 "--trajectories", "2", "--meta-batch-size", "2", "--hidden-sizes", "8", "--val-tasks", "2",
                 "--test-tasks", "2", "--rollout-workers", "0", "--output-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "HalfCheetah forward/backward, horizon 6" in out and "2 fixed test tasks" in out and "3 steps" in out
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert (run / "learning_curves.png").exists()
    if "no frames" in out:
        pytest.skip(f"headless rendering does not work here: {out.strip().splitlines()[-1]}")
    assert (run / "frames.png").stat().st_size > 10_000
    (run / "frames.png").unlink()
    assert main(["plot", str(run), "--split", "val"]) == 0
    assert (run / "frames.png").stat().st_size > 10_000  # drawn again, on the validation tasks


def test_the_locomotion_benchmark_refuses_a_run_made_with_other_settings_than_its_preset(tmp_path):
    stale = load_preset("rl-halfcheetah-fwd-bwd-maml-cpu").replace(balanced_directions=False, iterations=300)
    run_dir = tmp_path / "rl-halfcheetah-fwd-bwd-maml-cpu"
    run_dir.mkdir()
    stale.replace(output_dir=str(run_dir)).save(run_dir / "config.yaml")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_locomotion.py"
    done = subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path), "--no-train", "--methods",
                           "MAML"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("rl_locomotion: error: ") and "balanced_directions=False" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_locomotion_benchmark_finds_the_run_of_the_seed_and_test_set_asked_and_names_a_missing_one(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_locomotion.py"
    run_dir = tmp_path / "rl-halfcheetah-fwd-bwd-maml-cpu"
    run_dir.mkdir()
    other = load_preset("rl-halfcheetah-fwd-bwd-maml-cpu").replace(seed=1, test_set=2, output_dir=str(run_dir))
    other.resolved().save(run_dir / "config.yaml")  # as `fastadapt train ... --seed 1 --test-set 2` leaves it

    def benchmark(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path), "--no-train", "--methods",
                               "MAML", *options], capture_output=True, text=True, timeout=300)

    default = benchmark()
    assert default.returncode == 2 and default.stderr.startswith("rl_locomotion: error: ")
    assert "seed" in default.stderr and "Traceback" not in default.stderr  # the presets' seed 0: not this run
    asked = benchmark("--seed", "1", "--test-set", "2")
    assert asked.returncode == 2 and asked.stderr.startswith("rl_locomotion: error: "), asked.stderr
    assert "holds no best.pt" in asked.stderr and "Traceback" not in asked.stderr  # found, but never trained
