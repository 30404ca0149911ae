"""TSV → feature store conversion: images/s, and memory that does not grow with the file.

    python benchmarks/bench_convert.py [--images 2000] [--small 500] [--dir DIR]

Writes a seeded synthetic bottom-up-attention TSV of ``--images`` lines (36 boxes × 2048-d float32 features,
≈0.4 MB of base64 per line) and a copy of its first ``--small`` lines, then converts each in a fresh process
that reports conversion speed, the tracemalloc peak (Python and numpy allocations) and the growth of the
process's peak resident memory (ru_maxrss) during the conversion.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from mmcore.data.tsv import convert_tsv, encode_tsv_line

BOXES, DIM = 36, 2048


def generate(path: Path, small: Path, images: int, small_images: int, seed: int = 0) -> None:
    """Write ``images`` TSV lines to ``path`` and the first ``small_images`` of them to ``small``."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as big, open(small, "w") as little:
        for i in range(images):
            h, w = 480, 640
            x1 = rng.uniform(0, w / 2, BOXES)
            y1 = rng.uniform(0, h / 2, BOXES)
            boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, BOXES), y1 + rng.uniform(1, h / 2, BOXES)], 1)
            # Post-ReLU detector features: non-negative, mostly small.
            feats = np.maximum(rng.standard_normal((BOXES, DIM), dtype=np.float32), 0) * 3
            line = encode_tsv_line(f"COCO_train2014_{i:012d}", h, w, rng.integers(0, 1600, BOXES),
                                   rng.random(BOXES), rng.integers(0, 400, BOXES), rng.random(BOXES), boxes, feats)
            big.write(line)
            if i < small_images:
                little.write(line)


def child(tsv: str, out: str) -> None:
    """Convert one file in this (fresh) process and print its figures as JSON."""
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    result = convert_tsv([tsv], out, overwrite=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss
    print(json.dumps({"images": result.images, "seconds": result.seconds, "images_per_s": result.images_per_second,
                      "tracemalloc_peak_mb": peak / 2**20, "maxrss_growth_mb": grown / 1024,
                      "tsv_mb": Path(tsv).stat().st_size / 2**20, "store_mb": Path(out).stat().st_size / 2**20}))


def main() -> None:
    """Generate, convert both sizes in fresh processes, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--dir", type=Path, help="Working directory (kept); default: a temporary one, removed.")
    parser.add_argument("--child", nargs=2, metavar=("TSV", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        big, small = work / f"feats_{args.images}.tsv", work / f"feats_{args.small}.tsv"
        start = time.perf_counter()
        generate(big, small, args.images, args.small)
        print(f"generated {args.images} + {args.small} images in {time.perf_counter() - start:.1f}s "
              f"({big.stat().st_size / 2**20:.0f} MB + {small.stat().st_size / 2**20:.0f} MB)")
        print(f"{'images':>7} {'TSV MB':>7} {'store MB':>8} {'s':>6} {'images/s':>9} {'tracemalloc MB':>15} "
              f"{'maxrss +MB':>11}")
        for tsv in (small, big):
            proc = subprocess.run([sys.executable, __file__, "--child", str(tsv), str(tsv.with_suffix(".h5"))],
                                  check=True, capture_output=True, text=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{r['images']:>7} {r['tsv_mb']:>7.0f} {r['store_mb']:>8.0f} {r['seconds']:>6.1f} "
                  f"{r['images_per_s']:>9.0f} {r['tracemalloc_peak_mb']:>15.1f} {r['maxrss_growth_mb']:>11.1f}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
