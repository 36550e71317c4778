"""Where environments come from: for each MDP family a gymnasium environment (registered below, usable
outside fastadapt: ``gymnasium.make("fastadapt/Navigation2D-v0")``) and a batched torch simulator that
steps every task x trajectory of a meta-batch as one tensor operation, with the same trajectories.

The MuJoCo locomotion families (``locomotion``, needing the ``fastadapt[mujoco]`` extra) are gymnasium
environments only; ``parallel.BatchedGymnasium`` steps them in worker processes for the learners."""
from gymnasium.envs.registration import register, registry

from fastadapt.environments.bandit import BatchedBernoulliBandit, BernoulliBanditEnv
from fastadapt.environments.base import BatchedEnv, Spaces
from fastadapt.environments.navigation import BatchedNavigation2D, Navigation2DEnv
from fastadapt.environments.tabular_mdp import BatchedTabularMDP, TabularMDPEnv

#: gymnasium id -> entry point; registered when this package is imported
GYMNASIUM_IDS = {
    "fastadapt/Navigation2D-v0": "fastadapt.environments.navigation:Navigation2DEnv",
    "fastadapt/BernoulliBandit-v0": "fastadapt.environments.bandit:BernoulliBanditEnv",
    "fastadapt/TabularMDP-v0": "fastadapt.environments.tabular_mdp:TabularMDPEnv",
}
#: the MuJoCo locomotion families (registered without importing MuJoCo; making one needs it)
LOCOMOTION_IDS = {
    "fastadapt/HalfCheetahForwardBackward-v0": "fastadapt.environments.locomotion:HalfCheetahForwardBackwardEnv",
    "fastadapt/HalfCheetahVelocity-v0": "fastadapt.environments.locomotion:HalfCheetahVelocityEnv",
    "fastadapt/AntForwardBackward-v0": "fastadapt.environments.locomotion:AntForwardBackwardEnv",
    "fastadapt/AntDirection-v0": "fastadapt.environments.locomotion:AntDirectionEnv",
}
for _id, _entry_point in GYMNASIUM_IDS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry_point)
for _id, _entry_point in LOCOMOTION_IDS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry_point, max_episode_steps=200)

__all__ = ["BatchedEnv", "Spaces", "BatchedNavigation2D", "Navigation2DEnv", "BatchedBernoulliBandit",
           "BernoulliBanditEnv", "BatchedTabularMDP", "TabularMDPEnv", "GYMNASIUM_IDS", "LOCOMOTION_IDS"]
