"""Input-pipeline throughput: decoded and augmented images/s of the training tf.data pipeline, against the images/s
the training step consumes.

    python -m benchmarks.bench_pipeline --synthetic 4096 --size 112 112 --format jpeg --batch 128 \\
        --train-images-per-second 20 --markdown bench_pipeline.md
    python -m benchmarks.bench_pipeline --data DIR --prefix train --batch 128

Each variant runs `tfface.data.make_dataset` as training does (shuffled shards read interleaved, shuffle buffer,
decode, random flip, normalise, batch, prefetch) and times --batches batches after a warm-up: one batch, or a whole
pass over the data when the decoded images are cached in memory (the pass that fills the cache). Variants: the
records in one shard file or in --shards files (several files are read interleaved and in parallel), each without and
with the in-memory cache. Synthetic faces are smooth random patterns (JPEG-compressible like photos), written once to
a temporary folder.
"""
import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfface import atomic, cli  # noqa: E402
from tfface.data.pipeline import make_dataset  # noqa: E402
from tfface.data.schema import make_example  # noqa: E402
from tfface.data.writer import ShardedTFRecordWriter, read_description  # noqa: E402

TABLE_COLUMNS = ("data", "shards", "cache", "images/s", "x training need")


def synthetic_image(rng: np.random.Generator, size: Sequence[int]) -> np.ndarray:
    """uint8 [H, W, 3]: an 8x8 random colour pattern upsampled bilinearly, plus mild noise."""
    coarse = rng.uniform(30, 220, size=(1, 8, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, size, method="bilinear")[0].numpy()
    return np.clip(smooth + rng.normal(0, 6, size=smooth.shape), 0, 255).astype(np.uint8)


def write_synthetic(directory: Path, count: int, size: Sequence[int], image_format: str, shards: int) -> Path:
    """Writes `count` synthetic faces of `size` (100 identities) into `shards` shard files; returns `directory`."""
    rng = np.random.default_rng(0)
    per_shard = math.ceil(count / shards)
    with ShardedTFRecordWriter(directory, prefix="train", examples_per_shard=per_shard) as writer:
        for index in range(count):
            writer.write(make_example(synthetic_image(rng, size), index % 100, image_format=image_format))
    return directory


def measure(
    data_dir: Path, prefix: str, batch: int, batches: int, cache: bool, size: Optional[Sequence[int]] = None
) -> float:
    """Images/s of the training pipeline over `batches` batches after the warm-up (see the module docstring);
    `size` (H, W) resizes the stored images as the training config's data.image_size would."""
    description = read_description(data_dir, prefix)
    dataset = make_dataset(
        data_dir, prefix=prefix, batch_size=batch, training=True, flip=True, cache=cache, seed=0,
        shuffle_buffer=min(4096, description["num_examples"]), image_size=size,
    )
    return time_batches(dataset, batch, batches, warmup=math.ceil(description["num_examples"] / batch) if cache else 1)


def time_batches(dataset: tf.data.Dataset, batch: int, batches: int, warmup: int) -> float:
    """Images/s over `batches` batches of `batch` images after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        images = next(iterator)["image"]
    images.numpy()
    return batch * batches / (time.perf_counter() - started)


def run_variants(
    data_dirs: Sequence[Tuple[str, Path]], prefix: str, batch: int, batches: int, train_rate: Optional[float],
    size: Optional[Sequence[int]] = None,
) -> List[Dict]:
    """`measure` for every (name, folder) in `data_dirs`, without and with cache; one row dict each."""
    rows = []
    for name, directory in data_dirs:
        shards = len(read_description(directory, prefix)["shards"])
        for cache in (False, True):
            rate = measure(directory, prefix, batch, batches, cache, size)
            ratio = rate / train_rate if train_rate else None
            rows.append({"data": name, "shards": shards, "cache": cache, "images_per_second": rate, "ratio": ratio})
    return rows


def markdown_table(rows: Sequence[Dict]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.1f}"
        cache = "in memory" if row["cache"] else "no"
        lines.append(f"| {row['data']} | {row['shards']} | {cache} | {row['images_per_second']:.0f} | {ratio} |")
    return "\n".join(lines)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="a folder of TFRecord shards (tools.make_tfrecords output)")
    source.add_argument("--synthetic", type=int, default=2048, help="number of synthetic faces to write and read")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"),
                        help="synthetic image size; --data images are resized to it")
    parser.add_argument("--format", default="jpeg", choices=("jpeg", "png"))
    parser.add_argument("--shards", type=int, default=8, help="synthetic: shard files of the interleaved variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per variant")
    parser.add_argument("--train-images-per-second", type=float, help="the training step's images/s (bench_train)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    if min(args.synthetic, args.shards, args.batch, args.batches) < 1:
        print("error: --synthetic, --shards, --batch and --batches must be >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as scratch:
        if args.data:
            data_dirs = [(args.data, Path(args.data))]
        else:
            name = f"synthetic {args.synthetic} {args.format} {args.size[0]}x{args.size[1]}"
            data_dirs = [
                (name, write_synthetic(Path(scratch, str(shards)), args.synthetic, args.size, args.format, shards))
                for shards in sorted({1, args.shards})
            ]
        rows = run_variants(
            data_dirs, args.prefix, args.batch, args.batches, args.train_images_per_second, tuple(args.size)
        )
    table = markdown_table(rows)
    print(table)
    if args.markdown:
        atomic.write_text(args.markdown, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
