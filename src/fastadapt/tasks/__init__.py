"""Task distributions p(T): what a task is, independent of how one learns it."""
from fastadapt.tasks.base import TaskBatch, TaskDistribution
from fastadapt.tasks.sinusoid import SinusoidTasks

__all__ = ["TaskBatch", "TaskDistribution", "SinusoidTasks"]
