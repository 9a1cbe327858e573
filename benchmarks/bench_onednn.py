"""A SavedModel's bare forward with TensorFlow's default CPU kernels against oneDNN's (TF_ENABLE_ONEDNN_OPTS 0 / 1),
at several batch sizes (issue 27: why the served SavedModel outran its "bare batch-64" rate).

    python -m benchmarks.bench_onednn --model models/pretrained [--batches 1,4,16,64] [--images 256] [--rounds 2]

Each setting runs in its own process (TensorFlow reads the variable when imported): `SavedModelEmbedder.embed_batch`
on random uint8 faces, one warm-up call per batch size, then about --images images per batch size, --rounds times in
turn; prints the median images per wall second and per CPU-second of that process for each batch size, and the
largest difference between the two settings' embeddings of the same 64 faces.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from tfface import cli

SETTINGS = ("0", "1")
PARITY_ROWS = 64


def measure(model: str, batches: List[int], images: int, rounds: int, out: str) -> None:
    """In this process: {batch: [(images/s, images per CPU-s) per round]} as JSON on stdout; embeddings to `out`."""
    import numpy as np

    from tfface.embedders import SavedModelEmbedder, resolve_saved_model

    embedder = SavedModelEmbedder(resolve_saved_model(model, label="--model"), label="--model")
    faces = np.random.default_rng(0).integers(0, 256, (max(batches + [PARITY_ROWS]), *embedder.input_shape),
                                              dtype=np.uint8)
    np.save(out, embedder.embed_batch(faces[:PARITY_ROWS]))
    rates = {batch: [] for batch in batches}
    for batch in batches:
        embedder.embed_batch(faces[:batch])
    for _ in range(rounds):
        for batch in batches:
            calls = max(1, images // batch)
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                embedder.embed_batch(faces[:batch])
            done = calls * batch
            rates[batch].append((done / (time.perf_counter() - started), done / (time.process_time() - started_cpu)))
    print(json.dumps(rates))


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_onednn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a SavedModel folder or model base path (newest version)")
    parser.add_argument("--batches", default="1,4,16,64", help="comma-separated batch sizes")
    parser.add_argument("--images", type=int, default=256, help="images per batch size and round")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per setting")
    parser.add_argument("--measure", metavar="OUT", help=argparse.SUPPRESS)  # the child processes' mode
    args = parser.parse_args(argv)
    try:
        batches = [int(size) for size in args.batches.split(",")]
    except ValueError:
        raise ValueError(f"--batches must be comma-separated integers, got '{args.batches}'") from None
    if args.measure:
        measure(args.model, batches, args.images, args.rounds, args.measure)
        return 0
    import numpy as np

    results, embeddings = {}, {}
    folder = tempfile.TemporaryDirectory(prefix="bench-onednn-")
    for setting in SETTINGS:
        out = os.path.join(folder.name, f"embeddings-{setting}.npy")
        environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "3"}
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_onednn", "--model", args.model, "--batches",
                                args.batches, "--images", str(args.images), "--rounds", str(args.rounds),
                                "--measure", out], env=environment, capture_output=True, text=True)
        if child.returncode != 0:  # the child's own error line (a bad --model) is the user's answer
            print((child.stderr.strip().splitlines() or [f"error: the TF_ENABLE_ONEDNN_OPTS={setting} run failed"])[-1],
                  file=sys.stderr)
            folder.cleanup()
            return child.returncode
        results[setting] = json.loads(child.stdout.strip().splitlines()[-1])
        embeddings[setting] = np.load(out)
    folder.cleanup()
    print(f"{args.model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; images/s (per CPU-second), "
          f"median of {args.rounds} rounds")
    print("| TF_ENABLE_ONEDNN_OPTS | " + " | ".join(f"batch {batch}" for batch in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for setting in SETTINGS:
        cells = []
        for batch in batches:
            walls, cpus = zip(*results[setting][str(batch)])
            cells.append(f"{statistics.median(walls):.1f} ({statistics.median(cpus):.1f})")
        print(f"| {setting} | " + " | ".join(cells) + " |")
    difference = float(np.abs(embeddings["0"] - embeddings["1"]).max())
    print(f"max |difference| of the two settings' embeddings of {PARITY_ROWS} faces: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
