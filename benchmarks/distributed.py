"""Scaling of distributed meta-training: the same run with 1 and with N processes (``--nproc``).

    python benchmarks/distributed.py                         # Omniglot-shaped MAML, 1 vs 2 processes
    python benchmarks/distributed.py --preset sinusoid-maml --meta-batch-size 24 --iterations 500

Each process gets cores / N threads (``--threads`` = cores / N for the training processes), so the comparison
spends the same CPU; the thread count printed is the one the run's checkpoint records having used.
Throughput is meta-iterations per second over the whole run (spawning, the
process group, checkpoints included, as a user sees it); efficiency is the
speed-up divided by N. Both runs must end with the same weights (up to float
rounding): the largest difference is printed too.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from fastadapt.config.presets import load_preset
from fastadapt.runs.directory import train
from fastadapt.training.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="omniglot-maml")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--meta-batch-size", type=int, help="default: the preset's (must split over every --nproc)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data-root", help="Omniglot folder (default: $FASTADAPT_DATA or the cache)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{args.preset}, {args.iterations} meta-iterations, {cores} cores, torch {torch.__version__}", flush=True)
    rates, weights = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.nproc:
            overrides = dict(iterations=args.iterations, log_every=args.iterations, val_every=args.iterations,
                             checkpoint_every=args.iterations, val_tasks=1, output_dir=str(Path(scratch) / f"n{n}"),
                             threads=cores)  # train gives each of n processes cores // n of them
            if args.meta_batch_size:
                overrides["meta_batch_size"] = args.meta_batch_size
            if args.data_root:
                overrides["data_root"] = args.data_root
            cfg = load_preset(args.preset).replace(**overrides)
            start = time.perf_counter()
            train(cfg, progress=False, nproc=n)
            rates[n] = args.iterations / (time.perf_counter() - start)
            last = load_checkpoint(Path(cfg.training.output_dir) / "last.pt")
            weights[n] = last["learner"]
            print(f"{n} process(es), {last['threads']} thread(s) each: {rates[n]:.3f} it/s", flush=True)
    base = args.nproc[0]
    for n in args.nproc[1:]:
        difference = max((weights[n][k] - weights[base][k]).abs().max().item() for k in weights[base])
        speedup = rates[n] / rates[base]
        print(f"{n} vs {base}: speed-up {speedup:.2f}x, efficiency {speedup / (n / base):.0%}, "
              f"largest weight difference {difference:.1e}")


if __name__ == "__main__":
    main()
