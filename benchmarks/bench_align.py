"""tools.align end to end on a folder of photos: images/s and images per CPU-second, per --batch value.

    python -m benchmarks.bench_align --input ../shared/data/lm300w --limit 256 --resize 250 250 --batches 1 32 \\
        --workers 1

Copies the first `--limit` files of `--input` (name order) into a temporary folder, scaled to `--resize` W H when
given (LFW's photos are 250x250), then runs `tools.align` on them once per `--batches` value, after one untimed
warm-up run on the first 8 photos (TensorFlow start-up and tracing are not counted). Reported per run: wall time,
images/s, and CPU seconds of this process and its warping workers together (images per CPU-second: what a photo
costs however busy the machine is; on N idle cores the wall rate is at most N times it).
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from tfface.data.image_io import list_files, read_rgb
from tools import align

WARMUP_FILES = 8


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def copy_photos(source: Path, files: list[str], target: Path, resize) -> None:
    """Write each file as PNG under `target` (scaled to `resize` = (W, H) when given), in name order."""
    for index, relative in enumerate(files):
        image = Image.fromarray(read_rgb(source / relative))
        if resize is not None:
            image = image.resize(tuple(resize), Image.Resampling.BILINEAR)
        image.save(target / f"{index:05d}.png")


def time_align(folder: Path, out: Path, batch: int, workers: int) -> dict:
    """One `tools.align` run (112x112 crops only); wall seconds and CPU seconds."""
    argv = ["--input", str(folder), "--out", str(out), "--size", "112", "112", "--batch", str(batch),
            "--workers", str(workers)]
    started, started_cpu = time.perf_counter(), cpu_seconds()
    status = align.main(argv)
    if status != 0:
        raise RuntimeError(f"tools.align {' '.join(argv)} exited with {status}")
    return {"wall": time.perf_counter() - started, "cpu": cpu_seconds() - started_cpu}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_align", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--limit", type=int, default=256, help="photos timed (the first ones in name order)")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("W", "H"), help="scale every photo to W x H first")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="tools.align --batch values")
    parser.add_argument("--workers", type=int, default=1, help="tools.align --workers")
    args = parser.parse_args(argv)
    files = list_files(Path(args.input))[:args.limit] if Path(args.input).is_dir() else []
    if len(files) <= WARMUP_FILES or min(args.batches) < 1 or args.workers < 0:
        print(f"bench_align: error: --input needs more than {WARMUP_FILES} files (found {len(files)}), --batches "
              f">= 1 and --workers >= 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photos, warmup = scratch / "photos", scratch / "warmup"
        photos.mkdir()
        warmup.mkdir()
        copy_photos(Path(args.input), files, photos, args.resize)
        copy_photos(Path(args.input), files[:WARMUP_FILES], warmup, args.resize)
        size = "x".join(map(str, args.resize)) if args.resize else "original sizes"
        rows = []
        for batch in args.batches:
            time_align(warmup, scratch / f"warmup_out_{batch}", batch, args.workers)
            measured = time_align(photos, scratch / f"out_{batch}", batch, args.workers)
            rows.append(f"| {batch} | {args.workers} | {len(files)} | {size} | {measured['wall']:.2f} | "
                        f"{len(files) / measured['wall']:.1f} | {len(files) / measured['cpu']:.1f} |")
    print(f"tools.align on {len(files)} photos of {args.input} ({size}), {os.cpu_count()} CPU(s), load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| --batch | --workers | photos | size | wall s | images/s | images per CPU-s |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
