"""Training throughput on the current device: images/s of FaceTrainer steps on synthetic input.

    python -m benchmarks.bench_train --backbone iresnet50 --head arcface --batch 64 --size 112 112 --classes 10000
    python -m benchmarks.bench_train --compare --backbones iresnet18 iresnet50 mobilefacenet --heads arcface partial_fc \\
        --precisions float32 mixed_bfloat16 --batches 32 64 --markdown bench_train.md

Reports the median over timed steps after warm-up (the first steps trace and compile the graph). `--compare` runs
every combination of backbone x head x precision x batch in turn and prints (and with `--markdown` writes) one
Markdown table row per combination; a combination that fails gets its error in the row.
"""
import argparse
import itertools
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as trainers.train (tfface.cli.prefer_onednn) does

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfface import atomic, backbones, cli, heads  # noqa: E402
from tfface.training import FaceTrainer  # noqa: E402
from tfface.training.precision import PRECISIONS, precision_scope, wrap_optimizer  # noqa: E402
from tfface.training.strategy import STRATEGIES, select_strategy  # noqa: E402

TABLE_COLUMNS = ("backbone", "head", "precision", "batch", "device", "images/s", "step ms", "images per CPU-s")


def device_name() -> str:
    """'GPU (name) xN' or 'CPU (N cores)' for the table."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU ({details.get('device_name', 'unknown')}) x{len(gpus)}"
    return f"CPU ({os.cpu_count()} cores)"


def benchmark(
    backbone: str, head: str, batch: int, size=(112, 112), classes: int = 1000, warmup: int = 3, steps: int = 10,
    strategy: str = "auto", precision: str = "float32", head_options: Optional[Dict] = None,
) -> Dict[str, float]:
    """Times `steps` training steps after `warmup` ones; returns images/s and step seconds (medians of wall time),
    images per CPU-second (this process's CPU time over the timed steps: what the step costs however busy the
    machine is) and the replica count.

    The model is built under `precision` (see tfface.training.precision); SGD with momentum and weight decay, loss
    scaled under mixed_float16.
    """
    distribution = select_strategy(strategy)
    input_shape = (*size, 3)
    with distribution.scope(), precision_scope(precision):
        trainer = FaceTrainer(
            backbones.get_backbone(backbone, input_shape=input_shape),
            heads.get_head(head, classes, **(head_options or {})),
        )
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)
        trainer.compile(optimizer=wrap_optimizer(optimizer, precision))
        trainer.build_all(input_shape)
    rng = np.random.default_rng(0)
    data = {
        "image": tf.constant(rng.normal(size=(batch, *input_shape)).astype("float32")),
        "label": tf.constant(rng.integers(0, classes, size=batch).astype("int32")),
    }
    dataset = distribution.experimental_distribute_dataset(tf.data.Dataset.from_tensors(data).repeat())
    iterator = iter(dataset)
    step = tf.function(lambda batch_: distribution.run(trainer.train_step, args=(batch_,)))
    durations: List[float] = []
    cpu_seconds = 0.0
    for index in range(warmup + steps):
        started, started_cpu = time.perf_counter(), time.process_time()
        logs = step(next(iterator))
        float(distribution.reduce("mean", logs["loss"], axis=None))  # waits for the step to finish
        if index >= warmup:
            durations.append(time.perf_counter() - started)
            cpu_seconds += time.process_time() - started_cpu
    median = statistics.median(durations)
    return {
        "images_per_second": batch / median,
        "step_seconds": median,
        "images_per_cpu_second": batch * steps / cpu_seconds,
        "replicas": distribution.num_replicas_in_sync,
    }


def compare(
    backbone_names: Sequence[str], head_names: Sequence[str], precisions: Sequence[str], batches: Sequence[int],
    head_options: Optional[Dict[str, Dict]] = None, report: Optional[Callable[[Dict], None]] = None, **common,
) -> List[Dict]:
    """`benchmark` for every backbone x head x precision x batch; one row dict per combination (with "error" when
    it failed), also handed to `report` as soon as it is measured. head_options: options per head name; common:
    the other `benchmark` arguments."""
    rows = []
    device = device_name()
    for backbone, head, precision, batch in itertools.product(backbone_names, head_names, precisions, batches):
        row = {"backbone": backbone, "head": head, "precision": precision, "batch": batch, "device": device}
        try:
            result = benchmark(
                backbone, head, batch, precision=precision, head_options=(head_options or {}).get(head), **common
            )
            row.update(result)
            row["device"] = f"{device}, {result['replicas']} replica(s)"
        except (ValueError, tf.errors.OpError) as error:
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        keras.backend.clear_session()
        rows.append(row)
        if report is not None:
            report(row)
    return rows


TABLE_HEADER = "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * len(TABLE_COLUMNS)


def markdown_row(row: Dict) -> str:
    """One row of `compare` as a Markdown table line (TABLE_COLUMNS; a failed row shows its error)."""
    if "error" in row:
        measured = [f"failed: {row['error']}", "", ""]
    else:
        seconds = row["step_seconds"]
        measured = [f"{row['images_per_second']:.1f}", f"{seconds * 1000:.3g}", f"{row['images_per_cpu_second']:.2f}"]
    cells = [row["backbone"], row["head"], row["precision"], str(row["batch"]), row["device"], *measured]
    return "| " + " | ".join(cells) + " |"


def markdown_table(rows: Sequence[Dict]) -> str:
    return "\n".join([TABLE_HEADER, *(markdown_row(row) for row in rows)])


def _check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(unknown)}; available: {', '.join(known)}")


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="iresnet18", help=f"one of {', '.join(backbones.available())}")
    parser.add_argument("--head", default="arcface", help=f"one of {', '.join(heads.available())}")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--sample-rate", type=float, default=0.1, help="Partial FC's sample rate (head partial_fc)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strategy", default="auto", choices=STRATEGIES)
    parser.add_argument("--compare", action="store_true", help="run the grid of the plural options below")
    parser.add_argument("--backbones", nargs="+", default=["iresnet18", "iresnet50", "mobilefacenet"])
    parser.add_argument("--heads", nargs="+", default=["arcface"])
    parser.add_argument("--precisions", nargs="+", default=["float32"])
    parser.add_argument("--batches", type=int, nargs="+", default=[32])
    parser.add_argument("--markdown", help="--compare: also write the table to this file")
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    head_options = {"partial_fc": {"sample_rate": args.sample_rate}}
    common = {
        "size": tuple(args.size), "classes": args.classes, "warmup": args.warmup, "steps": args.steps,
        "strategy": args.strategy,
    }
    if min([args.batch, *args.batches, args.steps, args.classes]) < 1 or args.warmup < 0:
        raise ValueError("--batch, --batches, --steps and --classes must be >= 1, --warmup >= 0")
    if args.compare:
        _check_names("backbone(s)", args.backbones, backbones.available())
        _check_names("head(s)", args.heads, heads.available())
        _check_names("precision(s)", args.precisions, PRECISIONS)
        print(TABLE_HEADER, flush=True)
        rows = compare(
            args.backbones, args.heads, args.precisions, args.batches, head_options,
            report=lambda row: print(markdown_row(row), flush=True), **common,
        )
        table = markdown_table(rows)
        if args.markdown:
            atomic.write_text(args.markdown, table + "\n")
        return 0
    result = benchmark(
        args.backbone, args.head, args.batch, precision=args.precision,
        head_options=head_options.get(args.head), **common,
    )
    print(
        f"{args.backbone} + {args.head}, {args.precision}, batch {args.batch}, {args.size[0]}x{args.size[1]}, "
        f"{args.classes} classes, {device_name()} x{result['replicas']}: {result['images_per_second']:.1f} images/s "
        f"(median step {result['step_seconds'] * 1000:.3g} ms over {args.steps} steps), "
        f"{result['images_per_cpu_second']:.2f} images per CPU-second"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
