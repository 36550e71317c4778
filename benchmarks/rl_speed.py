"""Meta-RL speed on 2D navigation: the batched simulator vs gymnasium's SyncVectorEnv (environment steps per
second), and a MAML-RL meta-iteration vs a per-task reference loop.

    python benchmarks/rl_speed.py                  # 20 tasks x 20 trajectories x 100 steps, 1 thread
    python benchmarks/rl_speed.py --repeats 5

The code is in ``fastadapt.benchmarks.rl_speed``.
"""
import sys

from fastadapt.benchmarks.rl_speed import main

if __name__ == "__main__":
    sys.exit(main())
