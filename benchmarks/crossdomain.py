"""Cross-domain few-shot table: trained runs on their own test classes and on scikit-learn's digits.

    python benchmarks/crossdomain.py ProtoNet=runs/protonet MAML=runs/maml Baseline=runs/baseline

The code is in ``fastadapt.benchmarks.crossdomain``.
"""
import sys

from fastadapt.benchmarks.crossdomain import main

if __name__ == "__main__":
    sys.exit(main())
