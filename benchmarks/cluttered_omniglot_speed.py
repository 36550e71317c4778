"""Canvases per second of the batched torch sampler of cluttered Omniglot (fastadapt.tasks.cluttered_omniglot),
beside the exact one-at-a-time generator, per level and number of threads.

    python benchmarks/cluttered_omniglot_speed.py --data-root /work/shared/data/omniglot --levels 4 32 --threads 1 2
"""
from __future__ import annotations

import argparse
import time

import torch

from fastadapt.datasets import cluttered_omniglot as co
from fastadapt.tasks.cluttered_omniglot import ClutteredOmniglotTasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each figure is measured")
    args = parser.parse_args()
    glyphs = co.load_glyphs("train", args.data_root)
    bank = co.glyph_tensor(glyphs)
    print(f"{'characters':>10} {'threads':>7} {'torch canvases/s':>17} {'exact canvases/s':>17}", flush=True)
    for level in args.levels:
        start = time.perf_counter()
        co.generate_canvases(glyphs, level, co.SPLITS["train"].drawers, seed=0, length=200)
        exact = 200 / (time.perf_counter() - start)
        tasks = ClutteredOmniglotTasks(bank, level, co.SPLITS["train"].drawers)
        for threads in args.threads:
            torch.set_num_threads(threads)
            generator = torch.Generator().manual_seed(0)
            tasks.sample(args.batch_size, generator)  # warm-up
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                tasks.sample(args.batch_size, generator)
                count += args.batch_size
            print(f"{level:>10} {threads:>7} {count / (time.perf_counter() - start):>17.0f} {exact:>17.0f}", flush=True)


if __name__ == "__main__":
    main()
