"""MuJoCo rollout throughput with 1 and 2 worker processes (``fastadapt bench rollout-speed``); see
``fastadapt.benchmarks.rollout_speed``."""
import sys

from fastadapt.benchmarks.rollout_speed import main

if __name__ == "__main__":
    sys.exit(main())
