"""MuJoCo locomotion tasks of Finn et al. 2017 (section 5.3, appendix A.2) and Rothfuss et al. 2019 (ProMP),
as subclasses of gymnasium's ``HalfCheetah-v5`` and ``Ant-v5`` that differ only in the reward.

A task is a goal the robot is not shown: it is set by ``reset(options={"direction": ...})`` (or
``{"velocity": ...}``), given at construction, or else drawn from the family's distribution by the
environment's own seeded generator at ``reset(seed=...)``. Actions are clipped to the action space
([-1, 1] per actuator) before they are applied and charged for, as the papers' environments did
through rllab's normalised environment. Per step, with v the torso's velocity (finite difference of its
position over one control step, dt = 0.05 s, as gymnasium and ProMP compute it):

* ``HalfCheetahForwardBackward``: d ~ {-1, +1}; reward = d * v_x - 0.05 |a|^2
* ``HalfCheetahVelocity``:        g ~ U[0, 2]; reward = -|v_x - g| - 0.05 |a|^2
* ``AntForwardBackward``:          d ~ {-1, +1}; reward = d * v_x + 1 - 0.5 |a|^2 - 5e-4 |clip(f_ext, -1, 1)|^2
* ``AntDirection``:               u uniform on the unit circle; reward = u . (v_x, v_y) + 1 - 0.5 |a|^2 - 5e-4 |...|^2

The cheetah's control cost 0.05 = 0.5 x 0.1 is the papers' (gymnasium's default weight is 0.1 without the
0.5). The ant's terms (survival bonus 1, control 0.5, contact 5e-4) are ProMP's, which are gymnasium
Ant-v5's defaults; an ant episode ends when the torso height leaves [0.2, 1.0] (gymnasium's and Finn et
al.'s rllab range). Observations are gymnasium's (17 numbers for the cheetah, 105 for the ant); the task
is not among them.

Importing this module needs MuJoCo (``pip install "fastadapt[mujoco]"``).
"""
from __future__ import annotations

import math

import numpy as np
from gymnasium.utils import EzPickle

from fastadapt.environments.extras import MUJOCO_EXTRA, MissingExtraError

try:
    import mujoco
    from gymnasium.envs.mujoco.ant_v5 import AntEnv
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
except ImportError as error:  # gymnasium raises DependencyNotInstalled (an ImportError) without mujoco
    raise MissingExtraError(f"the MuJoCo locomotion environments need MuJoCo, which is not installed: "
                            f"pip install \"{MUJOCO_EXTRA}\" ({error})") from None

#: the papers' cheetah control cost, 0.5 * 0.1 * |a|^2
CHEETAH_CONTROL_COST = 0.05
#: goal velocities of HalfCheetahVelocity (Finn et al.: "uniformly at random between 0.0 and 2.0")
CHEETAH_VELOCITY_RANGE = (0.0, 2.0)
#: steps per episode in both papers' experiments
HORIZON = 200


class SharedModel:
    """Compile each MuJoCo model once per process and share it among the copies of an environment.

    A rollout worker holds hundreds of copies of one environment; the compiled ``MjModel`` is read-only
    while stepping, so they can share it and each keep only its own ``MjData`` (the simulation state).
    That makes building them fast and light, and MuJoCo's compiler messages appear once per process.
    """

    _models: dict[tuple[str, int, int], "mujoco.MjModel"] = {}

    def _initialize_simulation(self):
        key = (self.fullpath, self.width, self.height)
        if key not in SharedModel._models:
            SharedModel._models[key] = super()._initialize_simulation()[0]
        model = SharedModel._models[key]
        return model, mujoco.MjData(model)


class TaskEnv:
    """The task handling shared by the families: ``task_option`` names the option of ``reset`` that sets
    the task; subclasses define ``sample_task(rng)`` and ``check_task(value)``."""

    task_option: str

    def _init_task(self, task) -> None:
        self._given_task = None if task is None else self.check_task(task)
        self.task = self._given_task

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        observation, info = super().reset(seed=seed)  # the initial state noise: the same as gymnasium's env
        if options and self.task_option in options:
            self.task = self.check_task(options[self.task_option])
        elif self._given_task is None and (seed is not None or self.task is None):
            self.task = self.sample_task(self.np_random)
        return observation, {**info, self.task_option: np.copy(self.task)}

    def clip(self, action) -> np.ndarray:
        return np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)


def _direction_1d(value) -> float:
    direction = float(np.asarray(value, dtype=np.float64).reshape(()))
    if direction not in (-1.0, 1.0):
        raise ValueError(f"direction must be -1 (backward) or +1 (forward), got {value!r}")
    return direction


class HalfCheetahForwardBackwardEnv(TaskEnv, SharedModel, HalfCheetahEnv):
    """Run forward (direction +1) or backward (-1): reward = direction * v_x - 0.05 |a|^2."""

    task_option = "direction"

    def __init__(self, direction: float | None = None, ctrl_cost_weight: float = CHEETAH_CONTROL_COST, **kwargs):
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        EzPickle.__init__(self, direction, ctrl_cost_weight, **kwargs)
        self._init_task(direction)

    def sample_task(self, rng: np.random.Generator) -> float:
        return float(rng.choice([-1.0, 1.0]))

    def check_task(self, value) -> float:
        return _direction_1d(value)

    def step(self, action):
        return super().step(self.clip(action))

    def _get_rew(self, x_velocity: float, action):
        forward, control = self.task * x_velocity, self.control_cost(action)
        return forward - control, {"reward_forward": forward, "reward_ctrl": -control}


class HalfCheetahVelocityEnv(TaskEnv, SharedModel, HalfCheetahEnv):
    """Run at a goal velocity: reward = -|v_x - goal| - 0.05 |a|^2, goals ~ U[0, 2]."""

    task_option = "velocity"

    def __init__(self, velocity: float | None = None, ctrl_cost_weight: float = CHEETAH_CONTROL_COST,
                 velocity_range: tuple[float, float] = CHEETAH_VELOCITY_RANGE, **kwargs):
        self.velocity_range = velocity_range
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        EzPickle.__init__(self, velocity, ctrl_cost_weight, velocity_range, **kwargs)
        self._init_task(velocity)

    def sample_task(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(*self.velocity_range))

    def check_task(self, value) -> float:
        velocity = float(np.asarray(value, dtype=np.float64).reshape(()))
        if not math.isfinite(velocity):
            raise ValueError(f"velocity must be a finite number, got {value!r}")
        return velocity

    def step(self, action):
        return super().step(self.clip(action))

    def _get_rew(self, x_velocity: float, action):
        tracking, control = -abs(x_velocity - self.task), self.control_cost(action)
        return tracking - control, {"reward_forward": tracking, "reward_ctrl": -control}


class AntDirectionEnv(TaskEnv, SharedModel, AntEnv):
    """Walk along a direction u on the unit circle: reward = u . v_xy + 1 - 0.5 |a|^2 - 5e-4 |contact|^2."""

    task_option = "direction"

    def __init__(self, direction=None, **kwargs):
        super().__init__(**kwargs)
        EzPickle.__init__(self, direction, **kwargs)
        self._init_task(direction)

    def sample_task(self, rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        return np.array([math.cos(angle), math.sin(angle)])

    def check_task(self, value) -> np.ndarray:
        direction = np.asarray(value, dtype=np.float64).reshape(-1)
        if direction.shape != (2,) or abs(np.linalg.norm(direction) - 1.0) > 1e-6:
            raise ValueError(f"direction must be a unit vector (x, y), got {value!r}")
        return direction

    def direction_vector(self) -> np.ndarray:
        return self.task

    def step(self, action):
        action = self.clip(action)
        before = self.data.body(self._main_body).xpos[:2].copy()
        self.do_simulation(action, self.frame_skip)
        velocity = (self.data.body(self._main_body).xpos[:2] - before) / self.dt
        forward = float(self.direction_vector() @ velocity)
        healthy, control, contact = self.healthy_reward, self.control_cost(action), self.contact_cost
        terminated = (not self.is_healthy) and self._terminate_when_unhealthy
        info = {"x_velocity": velocity[0], "y_velocity": velocity[1], "reward_forward": forward,
                "reward_ctrl": -control, "reward_contact": -contact, "reward_survive": healthy}
        return self._get_obs(), forward + healthy - control - contact, terminated, False, info


class AntForwardBackwardEnv(AntDirectionEnv):
    """Walk forward (+1) or backward (-1) along x: the direction (d, 0) of ``AntDirectionEnv``."""

    def sample_task(self, rng: np.random.Generator) -> float:
        return float(rng.choice([-1.0, 1.0]))

    def check_task(self, value) -> float:
        return _direction_1d(value)

    def direction_vector(self) -> np.ndarray:
        return np.array([self.task, 0.0])
