"""Read + decode throughput of an insightface RecordIO folder (train.rec / train.idx / property, read directly by
`tfface.data.make_dataset`) against the TFRecord pipeline on the same JPEG bytes.

    python -m benchmarks.bench_recordio --faces 20000 --batch 128 --batches 120 --shards 8 \\
        --train-images-per-second 18.5

Writes --faces synthetic 112x112 faces (bench_pipeline's smooth patterns, JPEG quality 95, 1000 identities) once,
as a RecordIO folder (faces_emore's layout: record 0 header with the identity range, image records 1..N, identity
records) and as --shards TFRecord shards of the same encoded bytes. Then times, per source, --batches batches of the
training pipeline (shuffled order, decode, random flip, normalise, batch, prefetch) after 5 warm-up batches, twice,
alternating the sources, keeping each one's best (other jobs on a shared machine come and go); and
`recordio.scan` (every record's framing, header, label and image signature) in records/s. Prints a Markdown table.
"""
import argparse
import io
import math
import os
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.bench_pipeline import synthetic_image, time_batches  # noqa: E402
from tfface import cli  # noqa: E402
from tfface.data import recordio  # noqa: E402
from tfface.data.pipeline import make_dataset  # noqa: E402
from tfface.data.schema import make_example  # noqa: E402
from tfface.data.writer import ShardedTFRecordWriter  # noqa: E402

IDENTITIES = 1000
WARMUP_BATCHES = 5
ROUNDS = 2


def frame(payload: bytes) -> bytes:
    """One dmlc RecordIO record: magic, lrecord (cflag << 29 | length), bytes, padding; split at an aligned magic."""
    magic = struct.pack("<I", recordio.MAGIC)
    out, start = [], 0
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == magic]
    for cut in cuts:
        out += [magic, struct.pack("<I", ((1 if start == 0 else 2) << 29) | (cut - start)), payload[start:cut]]
        start = cut + 4
    last = payload[start:]
    out += [magic, struct.pack("<I", ((3 if cuts else 0) << 29) | len(last)), last, b"\0" * (-len(last) % 4)]
    return b"".join(out)


def write_faces(root: Path, count: int, shards: int) -> tuple:
    """The RecordIO folder and the TFRecord folder of `count` synthetic JPEG faces; (rec folder, tfrecord folder)."""
    rng = np.random.default_rng(0)
    identities = min(IDENTITIES, count)
    labels = np.sort(np.arange(count) % identities)  # images grouped by identity, as in faces_emore
    rec_dir, tfr_dir = root / "faces_rec", root / "faces_tfrecord"
    rec_dir.mkdir(parents=True)
    offsets, position = [], 0
    with open(rec_dir / "train.rec", "wb") as rec, \
            ShardedTFRecordWriter(tfr_dir, "train", math.ceil(count / shards)) as writer:
        def put(payload: bytes) -> None:
            nonlocal position
            data = frame(payload)
            offsets.append(position)
            rec.write(data)
            position += len(data)

        first_identity = count + 1
        put(struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([first_identity, first_identity + identities],
                                                           np.float32).tobytes())
        for index, label in enumerate(labels):
            buffer = io.BytesIO()
            Image.fromarray(synthetic_image(rng, (112, 112))).save(buffer, format="JPEG", quality=95)
            put(struct.pack("<IfQQ", 0, float(label), index + 1, 0) + buffer.getvalue())
            writer.write(make_example(buffer.getvalue(), int(label), image_format="jpeg"))
        for identity in range(identities):
            members = np.flatnonzero(labels == identity) + 1
            put(struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([members[0], members[-1] + 1], np.float32).tobytes())
    (rec_dir / "train.idx").write_text("".join(f"{key}\t{offset}\n" for key, offset in enumerate(offsets)))
    (rec_dir / "property").write_text(f"{identities},112,112")
    return rec_dir, tfr_dir


def images_per_second(folder: Path, batch: int, batches: int) -> float:
    dataset = make_dataset(folder, batch_size=batch, training=True, flip=True, seed=0, shuffle_buffer=4096)
    return time_batches(dataset, batch, batches, WARMUP_BATCHES)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_recordio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=8, help="TFRecord shard files")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=120, help="timed batches per source")
    parser.add_argument("--train-images-per-second", type=float, help="the training step's images/s (bench_train)")
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    if min(args.faces, args.shards, args.batch, args.batches) < 1:
        print("error: --faces, --shards, --batch and --batches must be >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_recordio_") as scratch:
        started = time.perf_counter()
        rec_dir, tfr_dir = write_faces(Path(scratch), args.faces, args.shards)
        print(f"wrote {args.faces} faces twice in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        started = time.perf_counter()
        result = recordio.scan(rec_dir)
        scan_rate = args.faces / (time.perf_counter() - started)
        assert not result.bad, result.bad[:3]
        rates = {"TFRecord": 0.0, "RecordIO": 0.0}
        for _ in range(ROUNDS):  # alternated, the best of each kept: the machine's other jobs come and go
            for name, folder in (("TFRecord", tfr_dir), ("RecordIO", rec_dir)):
                rates[name] = max(rates[name], images_per_second(folder, args.batch, args.batches))
    need = args.train_images_per_second
    print(f"| source | images/s | x TFRecord | x training need ({need or '?'} images/s) |")
    print("|---|---|---|---|")
    for name, rate in rates.items():
        ratio = f"{rate / need:.0f}" if need else ""
        print(f"| {name} ({args.faces} faces, 112x112 JPEG, batch {args.batch}) | {rate:.0f} | "
              f"{rate / rates['TFRecord']:.2f} | {ratio} |")
    print(f"| recordio.scan (framing, header, label, signature of every record) | {scan_rate:.0f} records/s | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
