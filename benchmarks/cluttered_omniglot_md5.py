"""Regenerate the last job of each official cluttered-Omniglot evaluation split and compare the MD5 of its last
canvas with the one published with the original generator (Michaelis et al., 2018).

    python benchmarks/cluttered_omniglot_md5.py --data-root /work/shared/data/omniglot
    python benchmarks/cluttered_omniglot_md5.py --levels 4 32 --splits val-one-shot test-one-shot

Each check regenerates 2,000 canvases (about 1 s at 4 characters, a minute at 256 on one core). Only the
canvas bytes are hashed; no test-set figure is computed.
"""
from __future__ import annotations

import argparse
import sys
import time

from fastadapt.datasets import cluttered_omniglot as co


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder of the Omniglot zips (default: as load_omniglot)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(co.LEVELS), choices=co.LEVELS)
    parser.add_argument("--splits", nargs="+", default=list(co.PUBLISHED_MD5[4]), choices=list(co.PUBLISHED_MD5[4]))
    args = parser.parse_args()
    glyphs = {split: co.load_glyphs(split, args.data_root) for split in args.splits}
    failures = 0
    print(f"{'characters':>10}  {'split':<14} {'job':>3}  {'MD5 of last canvas':<32}  match  seconds", flush=True)
    for level in args.levels:
        for split in args.splits:
            last_job = len(co.job_seeds(split)) - 1
            start = time.perf_counter()
            job = co.generate_job(glyphs[split], level, split, last_job)
            digest = co.canvas_md5(job.canvases[-1])
            match = digest == co.PUBLISHED_MD5[level][split]
            failures += not match
            print(f"{level:>10}  {split:<14} {last_job:>3}  {digest}  {'yes' if match else 'NO':<5}  "
                  f"{time.perf_counter() - start:7.1f}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
