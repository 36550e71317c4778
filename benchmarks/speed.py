"""Speed of a meta-training step: ours against a textbook per-task loop and a plain-training floor,
for MAML (second and first order) and Prototypical Networks on Omniglot-shaped data.

    python benchmarks/speed.py                                          # CPU, meta-batch 32
    python benchmarks/speed.py --device cuda --meta-batch-sizes 4 32 128
    python benchmarks/speed.py --data-root ~/data/omniglot              # real images (same speed)

The same as ``fastadapt bench speed``; the code is in ``fastadapt.benchmarks.speed``.
"""
import sys

from fastadapt.benchmarks.speed import main

if __name__ == "__main__":
    sys.exit(main())
