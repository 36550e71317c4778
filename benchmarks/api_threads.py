"""The README's Python API loop against `fastadapt train` for the same work, alone or beside a busy job.

    python benchmarks/api_threads.py                        # 300 MAML iterations, alone and beside a busy job
    python benchmarks/api_threads.py --iterations 1000 --no-busy
    python benchmarks/api_threads.py --rl --iterations 4          # the README's meta-RL block (MAML-RL, 2D navigation)

The Python side is the README's first Python block, run as written in a fresh interpreter (torch's own
thread count, no OMP_NUM_THREADS) with only its iteration count changed, timed from its first to its last
meta-iteration. The command-line side is `fastadapt train sinusoid-maml` for as many iterations; its time
is the training time metrics.jsonl records (validation and checkpoints left out, as the loop has none).
The busy job is `fastadapt train sinusoid-maml --threads 2`, started a few seconds before and stopped after.
With ``--rl`` the Python side is the README's meta-RL block (its loop of ``learner.meta_update``) and the
command line `fastadapt train --algorithm maml-rl --tasks nav2d --inner-lr 0.1 --hidden-sizes 100 100`, the
block's settings (20 tasks of 20 trajectories, horizon 100, TRPO on every task's KL, the 2 x 100 policy
``GaussianMLPPolicy`` builds; without ``--hidden-sizes`` the command line builds 2 x 40, a third of the
work); both are timed over all but their last iteration, as the command line validates at its last one.

Both sides seed 0, and the script compares the loop's ``metrics[KEY]`` after every iteration with
metrics.jsonl's KEY (the loss; the return with ``--rl``): they agree only where the two sides do the same
work, so it stops with an error where they do not.
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


#: (the loop as the README writes it, the line after the loop, the command line doing the same work, the metric
#: both print after each iteration)
WORKLOADS = {
    "maml": ("for iteration in range(20_000):", "\nnew_task =", ["train", "sinusoid-maml"], "loss"),
    "rl": ("for iteration in range(100):", "\nreturns =", ["train", "--algorithm", "maml-rl", "--tasks", "nav2d",
                                                            "--inner-lr", "0.1", "--hidden-sizes", "100", "100"],
           "return"),
}


def readme_loop(workload: str, iterations: int) -> str:
    """The README's Python block holding ``workload``'s loop, cut after it, printing after each iteration the
    seconds since the loop began and the iteration's metric."""
    loop, after, _, key = WORKLOADS[workload]
    text = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    code = next((block for block in re.findall(r"```python\n(.*?)```", text, re.S) if loop in block), None)
    if code is None:
        raise SystemExit(f"no Python block of the README has the loop {loop!r} any more")
    head, body = code.split(loop, 1)
    body = body.split(after, 1)[0]
    return (f"{head}import time; _start = time.perf_counter()\nfor iteration in range({iterations}):{body}"
            f"\n    print(time.perf_counter() - _start, float(metrics[{key!r}]), flush=True)\n")


def fastadapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastadapt", *args]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def measure(workload: str, iterations: int, folder: Path) -> tuple[float, float, bool]:
    """(seconds of the README loop, seconds of the CLI's training) for the first ``iterations - 1`` of
    ``iterations`` iterations (the CLI validates at its last), and whether both printed the same metric after
    every iteration."""
    done = subprocess.run([sys.executable, "-c", readme_loop(workload, iterations)], capture_output=True, text=True,
                          env=environment(), check=True)
    printed = [line.split() for line in done.stdout.splitlines() if line.strip()]
    api = float(printed[-2][0])
    subprocess.run(fastadapt(*WORKLOADS[workload][2], "--iterations", str(iterations), "--no-progress", "--no-eval",
                             "--log-every", "1", "--val-every", str(10 * iterations), "--output-dir", str(folder)),
                   check=True, capture_output=True, env=environment())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().split("\n") if line.strip()]
    cli = next(r["seconds"] for r in records if r["iteration"] == iterations - 1)
    key = WORKLOADS[workload][3]
    same = [float(value) for _, value in printed] == [r[key] for r in records]
    return api, cli, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="meta-iterations, the last one not timed "
                        "(default: 300)")
    parser.add_argument("--rl", action="store_true", help="the README's meta-RL block instead of its MAML loop")
    parser.add_argument("--no-busy", action="store_true", help="measure alone only (default: also beside a busy job)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} before starting")
    workload = "rl" if args.rl else "maml"
    with tempfile.TemporaryDirectory() as folder:
        for busy in (False, True)[:1 if args.no_busy else 2]:
            competitor = None
            if busy:
                competitor = subprocess.Popen(fastadapt(*BUSY, "--output-dir", str(Path(folder) / "busy")),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
                time.sleep(5)
            try:
                api, cli, same = measure(workload, args.iterations, Path(folder) / f"cli-{busy}")
            finally:
                if competitor is not None:
                    competitor.terminate()
                    competitor.wait()
            where = "beside a busy 2-thread job" if busy else "alone"
            print(f"{args.iterations - 1} {'MAML-RL' if args.rl else 'MAML'} iterations, {where}: README Python "
                  f"loop {api:.2f} s, fastadapt train {cli:.2f} s, ratio {api / cli:.2f}; "
                  f"the same {WORKLOADS[workload][3]} after every iteration: {'yes' if same else 'NO'}")
            if not same:
                raise SystemExit("the README loop and the command line did not do the same work")


if __name__ == "__main__":
    main()
