"""Latency and throughput of `fastadapt serve`: 5-way 1-shot classify requests of drawn Omniglot test
characters, as the page sends them, against a real server process (median and p95 over 200 requests,
then requests per second with 8 clients at once).

    python benchmarks/serve_latency.py                  # an untrained Conv-4 ProtoNet (same arithmetic)
    python benchmarks/serve_latency.py RUN_DIR --data-root ~/data/omniglot --json serve.json

The code is in ``fastadapt.benchmarks.serve``.
"""
import sys

from fastadapt.benchmarks.serve import main

if __name__ == "__main__":
    sys.exit(main())
