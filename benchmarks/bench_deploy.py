"""Benchmark deployment files: size and CPU latency at batch 1 of each embedding model given, in its own runtime.

    python -m benchmarks.bench_deploy MODEL [MODEL ...] [--runs 200] [--threads 0]

MODEL is a SavedModel folder, a .tflite file (LiteRT) or an .onnx file (onnxruntime), as tools.export writes them
(tfface.embedders). One SynthFaces render at the model's input size is embedded --runs times after 10 warm-up runs;
prints a Markdown row per model: format, size (the file, or the SavedModel folder's files), median and 90th
percentile latency in milliseconds. --threads sets LiteRT's thread count (0: all CPUs; SavedModel and onnxruntime
use their defaults, all CPUs).
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfface.deploy import synth_faces  # noqa: E402
from tfface.embedders import TFLiteEmbedder, load_embedder  # noqa: E402

WARMUP_RUNS = 10


def size_bytes(path: Path) -> int:
    """A file's size, or the total size of the files under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())


def latencies_ms(embed, image: np.ndarray, runs: int) -> np.ndarray:
    """Wall milliseconds of `runs` calls of embed(image [1, H, W, 3]) after WARMUP_RUNS calls."""
    for _ in range(WARMUP_RUNS):
        embed(image)
    times = np.empty(runs)
    for run in range(runs):
        started = time.perf_counter()
        embed(image)
        times[run] = time.perf_counter() - started
    return 1000.0 * times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_deploy", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="SavedModel folders, .tflite or .onnx files")
    parser.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per model")
    parser.add_argument("--threads", type=int, default=0, help="LiteRT threads (0: all CPUs)")
    args = parser.parse_args(argv)
    print(f"batch 1, {args.runs} runs after {WARMUP_RUNS} warm-up, {os.cpu_count()} CPUs", file=sys.stderr)
    print("| model | format | size (MB) | latency median (ms) | latency p90 (ms) |")
    print("|---|---|---|---|---|")
    for model in args.models:
        path = Path(model)
        if path.suffix.lower() == ".tflite":
            embedder = TFLiteEmbedder(path, label="model", num_threads=args.threads or None)
        else:
            embedder = load_embedder(path)
        quantize = (embedder.metadata or {}).get("quantize")
        image = synth_faces(embedder.input_size)[:1]
        times = latencies_ms(embedder.embed_batch, image, args.runs)
        print(f"| {model} | {embedder.format}{' ' + quantize if quantize else ''} | {size_bytes(path) / 1e6:.2f} | "
              f"{np.median(times):.2f} | {np.percentile(times, 90):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
