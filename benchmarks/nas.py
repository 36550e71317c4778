"""Meta-learned architecture search against a hand-designed network of the same size (issue 14):
a MetaNAS search on Omniglot (preset omniglot-metanas-cpu), its architecture and an equal-size Conv-4
retrained with the same method and budget at 5-way and 20-way 1-shot, both tested once.

    python benchmarks/nas.py --output-dir runs/nas
    python benchmarks/nas.py --output-dir runs/nas --iterations 2000 --ways 20

The code is in ``fastadapt.benchmarks.nas``.
"""
import sys

from fastadapt.benchmarks.nas import main

if __name__ == "__main__":
    sys.exit(main())
