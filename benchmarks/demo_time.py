"""How long `fastadapt demo` takes: alone, and beside another busy training job (the ordinary case of
someone running two experiments at once on a small machine).

    python benchmarks/demo_time.py                 # both measurements, fresh runs in a temporary folder
    python benchmarks/demo_time.py --iterations 2000

The competing job is `fastadapt train sinusoid-maml --threads 2`: a process that keeps two threads busy,
started a few seconds before the demo and stopped when it ends. Each demo trains from scratch.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITOR = ["train", "sinusoid-maml", "--threads", "2", "--iterations", "100000000", "--no-progress",
              "--no-eval", "--checkpoint-every", "100000000", "--val-every", "100000000"]


def fastadapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastadapt", *args]


def time_demo(folder: Path, iterations: int) -> float:
    start = time.perf_counter()
    subprocess.run(fastadapt("demo", "--iterations", str(iterations), "--output-dir", str(folder), "--no-progress"),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000, help="the demo's iterations (default: 20000)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        alone = time_demo(Path(tmp) / "alone", args.iterations)
        print(f"fastadapt demo alone: {alone:.1f} s", flush=True)
        competitor = subprocess.Popen(fastadapt(*COMPETITOR, "--output-dir", str(Path(tmp) / "busy")),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)  # let it start its two threads
            beside = time_demo(Path(tmp) / "beside", args.iterations)
        finally:
            competitor.terminate()
            competitor.wait()
        print(f"fastadapt demo beside a busy 2-thread training job: {beside:.1f} s", flush=True)


if __name__ == "__main__":
    main()
