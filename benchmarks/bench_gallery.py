"""Benchmark gallery search: ms per probe over a synthetic memory-mapped index of 10k, 100k and 1M entries.

    python -m benchmarks.bench_gallery [--sizes 10000 100000 1000000] [--dim 512] [--probes 256] [--k 5]
        [--repeats 3] [--dir TMP]

Each index is random unit rows stored as tools.gallery stores them (float32 .npy, written in blocks with
np.lib.format.open_memmap, so the 1M index is never built in memory) and opened memory-mapped; the search is
`tfface.gallery.top_k_search`, the code of `tools.gallery search` (blocks of the mapped index, one matrix
product with all probes each, a running top k). Timed after one warm-up search (the file is then in the page
cache): the median over --repeats of a batch of --probes probes, divided by the probes (ms per probe, wall and
CPU time of this process: on a machine shared with other jobs the CPU time shows what an idle one would give), and
one probe alone. Memory: the index file, and the peak resident memory of this process (it includes the mapped index
pages it touched). Target (issue 26): <= 50 ms per probe at 1,000,000 entries on 2 CPU cores. Prints Markdown rows.
"""
import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_evaluation import time_call
from tfface.gallery import DTYPE, top_k_search

TARGET_MS = 50.0


def write_index(path: Path, count: int, dim: int, seed: int, block: int = 100_000) -> None:
    """Random unit rows [count, dim] as a gallery .npy (tfface.gallery.DTYPE), written block by block."""
    index = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPE, shape=(count, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, count, block):
        rows = rng.standard_normal((min(block, count - start), dim), dtype=np.float32)
        index[start:start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    index.flush()
    del index


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--probes", type=int, default=256)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="folder for the index files (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    probes = rng.standard_normal((args.probes, args.dim), dtype=np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    print(f"{os.cpu_count()} CPU cores; {args.dim}-d, {np.dtype(DTYPE).name} index, k {args.k}, "
          f"batch of {args.probes} probes")
    print("| entries | index file | batch ms / probe (wall) | CPU ms / probe | 1 probe ms | peak RSS | <= 50 ms |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for size in args.sizes:
            path = Path(folder) / f"index-{size}.npy"
            write_index(path, size, args.dim, seed=size)
            index = np.load(path, mmap_mode="r")
            batch = time_call(lambda: top_k_search(index, probes, args.k), args.repeats)  # its warm-up pages it in
            single = time_call(lambda: top_k_search(index, probes[:1], args.k), args.repeats)["seconds"]
            per_probe_ms = 1000 * batch["seconds"] / args.probes
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {size:,} | {path.stat().st_size / 2**20:,.0f} MiB | {per_probe_ms:.2f} | "
                  f"{1000 * batch['cpu_seconds'] / args.probes:.2f} | {1000 * single:.1f} | {peak_mb:,.0f} MiB | "
                  f"{'yes' if per_probe_ms <= TARGET_MS else 'no'} |", flush=True)
            del index
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
