"""The README's Python API loop against `fastadapt train` for the same work, alone or beside a busy job.

    python benchmarks/api_threads.py                        # 300 MAML iterations, alone and beside a busy job
    python benchmarks/api_threads.py --iterations 1000 --no-busy

The Python side is the README's first Python block, run as written in a fresh interpreter (torch's own
thread count, no OMP_NUM_THREADS) with only its iteration count changed, timed from its first to its last
meta-iteration. The command-line side is `fastadapt train sinusoid-maml` for as many iterations; its time
is the training time metrics.jsonl records (validation and checkpoints left out, as the loop has none).
The busy job is `fastadapt train sinusoid-maml --threads 2`, started a few seconds before and stopped after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY = ["train", "sinusoid-maml", "--threads", "2", "--iterations", "100000000", "--no-progress", "--no-eval",
        "--checkpoint-every", "100000000", "--val-every", "100000000"]


def readme_loop(iterations: int) -> str:
    """The README's first Python block, timed around its meta-training loop, for ``iterations`` iterations."""
    text = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    loop = "for iteration in range(20_000):"
    if loop not in code:
        raise SystemExit("the README's first Python block no longer has its 20,000-iteration loop")
    code = code.replace(loop, f"import time; _start = time.perf_counter()\nfor iteration in range({iterations}):")
    return code.replace("\nnew_task =", "\nprint(time.perf_counter() - _start)\nnew_task =", 1)


def fastadapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastadapt", *args]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def measure(iterations: int, folder: Path) -> tuple[float, float]:
    """(seconds of the README loop, seconds of the CLI's training) for ``iterations`` MAML iterations."""
    done = subprocess.run([sys.executable, "-c", readme_loop(iterations)], capture_output=True, text=True,
                          env=environment(), check=True)
    api = float(done.stdout.split()[-1])
    subprocess.run(fastadapt("train", "sinusoid-maml", "--iterations", str(iterations), "--no-progress", "--no-eval",
                             "--val-every", str(10 * iterations), "--output-dir", str(folder)),
                   check=True, capture_output=True, env=environment())
    lines = (folder / "metrics.jsonl").read_text().split("\n")
    cli = max(json.loads(line).get("seconds", 0.0) for line in lines if line.strip())
    return api, cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="MAML meta-iterations (default: 300)")
    parser.add_argument("--no-busy", action="store_true", help="measure alone only (default: also beside a busy job)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} before starting")
    with tempfile.TemporaryDirectory() as folder:
        for busy in (False, True)[:1 if args.no_busy else 2]:
            competitor = None
            if busy:
                competitor = subprocess.Popen(fastadapt(*BUSY, "--output-dir", str(Path(folder) / "busy")),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
                time.sleep(5)
            try:
                api, cli = measure(args.iterations, Path(folder) / f"cli-{busy}")
            finally:
                if competitor is not None:
                    competitor.terminate()
                    competitor.wait()
            where = "beside a busy 2-thread job" if busy else "alone"
            print(f"{args.iterations} MAML iterations, {where}: README Python loop {api:.2f} s, "
                  f"fastadapt train {cli:.2f} s, ratio {api / cli:.2f}")


if __name__ == "__main__":
    main()
