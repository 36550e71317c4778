"""Task distributions p(T): what a task is, independent of how one learns it."""
from fastadapt.tasks.base import TaskBatch, TaskDistribution
from fastadapt.tasks.sinusoid import SinusoidTasks
from fastadapt.tasks.episodes import EpisodeTasks, WithinAlphabetEpisodes
from fastadapt.tasks.minibatches import ClassMiniBatches
from fastadapt.tasks.signature import TaskSignature

__all__ = ["TaskBatch", "TaskDistribution", "SinusoidTasks", "EpisodeTasks", "WithinAlphabetEpisodes",
           "ClassMiniBatches", "TaskSignature"]

from fastadapt.tasks.mdp import (BanditTasks, LocomotionTasks, MDPBatch, Navigation2DTasks,  # noqa: E402
                                 TabularMDPTasks)

__all__ += ["MDPBatch", "Navigation2DTasks", "BanditTasks", "TabularMDPTasks", "LocomotionTasks"]
