"""Benchmark tools.evaluate's embedding loop: end-to-end images/s (read, decode, batch, run) against the bare model's
forward images/s at the same batch.

    python -m benchmarks.bench_evaluate [--model PATH] [--images_dir DIR | --images 512] [--batch 64] [--repeats 3]

--model: a SavedModel, .tflite or .onnx (tfface.embedders); by default MobileFaceNet (112x112, 512-d, random
weights) exported to a temporary folder. Images: every .jpg/.png under --images_dir (e.g. aligned faces), else
--images SynthFaces renders at the model's input size written as PNG files. End to end is
`tools.evaluate.embed_distinct_images` over the files with --flip none (one forward pass per image); bare forward
is `embed_batch` on batches already decoded in memory; serial is the loop tools.evaluate ran before the pipeline
(decode a batch with `load_images`, then run it). Prints images per wall second and per CPU-second (this process),
medians over --repeats rounds that run the three in turn after a warm-up round, as a Markdown row.
Target (issue 20): end to end >= 80% of bare forward.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfface import backbones  # noqa: E402
from tfface.deploy import synth_faces  # noqa: E402
from tfface.embedders import load_embedder  # noqa: E402
from tfface.evaluation import load_images  # noqa: E402
from tfface.export import export_backbone  # noqa: E402
from tools.evaluate import BenchmarkPairs, embed_distinct_images  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TARGET_RATIO = 0.8


def interleaved_rates(phases: Dict[str, Callable[[], object]], images: int, repeats: int) -> Dict[str, Tuple]:
    """{name: (images per wall second, images per CPU-second)}: medians over `repeats` rounds that run every phase
    once in turn (so a change in the machine's load hits all phases alike), after one warm-up round."""
    for function in phases.values():
        function()
    walls = {name: [] for name in phases}
    cpus = {name: [] for name in phases}
    for _ in range(repeats):
        for name, function in phases.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            function()
            walls[name].append(time.perf_counter() - started)
            cpus[name].append(time.process_time() - started_cpu)
    return {name: (images / statistics.median(walls[name]), images / statistics.median(cpus[name])) for name in phases}


def default_model(folder: Path) -> Path:
    """MobileFaceNet with random weights exported as a tfface SavedModel under `folder`."""
    backbone = backbones.get_backbone("mobilefacenet", input_shape=(112, 112, 3))
    return export_backbone(backbone, folder / "mobilefacenet" / "1", metadata={"backbone": "mobilefacenet"})


def image_files(args: argparse.Namespace, folder: Path, input_size) -> list:
    """The benchmark's image files: --images_dir's, else --images SynthFaces PNGs written under `folder`."""
    if args.images_dir:
        files = sorted(str(path) for path in Path(args.images_dir).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"error: --images_dir {args.images_dir}: no .jpg or .png files")
        return files[: args.images] if args.images else files
    faces = synth_faces(input_size)
    files = []
    for index in range(args.images or 512):
        files.append(str(folder / f"{index:05d}.png"))
        Image.fromarray(faces[index % len(faces)]).save(files[-1])
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="SavedModel, .tflite or .onnx (default: random MobileFaceNet)")
    parser.add_argument("--images_dir", help="folder of image files (default: SynthFaces PNGs)")
    parser.add_argument("--images", type=int, default=0, help="number of images (default: 512, or all of the dir)")
    parser.add_argument("--batch", type=int, default=64, help="images per model call")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as folder:
        folder = Path(folder)
        embedder = load_embedder(args.model or default_model(folder), label="--model")
        files = image_files(args, folder, embedder.input_size)
        pairs = BenchmarkPairs(files, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), None)
        decoded = load_images(files, embedder.input_size)
        batches = [decoded[start : start + args.batch] for start in range(0, len(files), args.batch)]

        def bare():
            for batch in batches:
                embedder.embed_batch(batch)

        def end_to_end():
            embed_distinct_images(embedder.embed_batch, pairs, embedder.input_size, "none", args.batch, "bench")

        def serial():
            for start in range(0, len(files), args.batch):
                embedder.embed_batch(load_images(files[start : start + args.batch], embedder.input_size))

        rates = interleaved_rates({"bare": bare, "end_to_end": end_to_end, "serial": serial}, len(files), args.repeats)
    ratio = rates["end_to_end"][0] / rates["bare"][0]
    source = args.model or "MobileFaceNet (random weights), SavedModel"
    print(f"{len(files)} images ({args.images_dir or 'SynthFaces PNG'}), batch {args.batch}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    print("| model | batch | bare forward | end to end | end to end / bare | serial decode, then run | target |")
    print("|---|---|---|---|---|---|---|")
    cells = " | ".join(f"{rates[name][0]:.1f} images/s ({rates[name][1]:.1f} per CPU-s)"
                       for name in ("bare", "end_to_end"))
    print(f"| {source} | {args.batch} | {cells} | {ratio:.2f} | {rates['serial'][0]:.1f} images/s "
          f"({rates['serial'][1]:.1f} per CPU-s) | {'met' if ratio >= TARGET_RATIO else 'missed'} (>= {TARGET_RATIO}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
