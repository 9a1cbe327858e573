"""Training throughput on the current device: images/s of FaceTrainer steps on synthetic input.

    python -m tools.bench_train --backbone iresnet50 --head arcface --batch 64 --size 112 112 --classes 10000

Reports the median over timed steps after warm-up (the first steps trace and compile the graph).
"""
import argparse
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfface import backbones, heads  # noqa: E402
from tfface.training import FaceTrainer  # noqa: E402
from tfface.training.builder import select_strategy  # noqa: E402


def benchmark(
    backbone: str, head: str, batch: int, size=(112, 112), classes: int = 1000, warmup: int = 3, steps: int = 10,
    strategy: str = "auto",
) -> Dict[str, float]:
    """Times `steps` training steps after `warmup` ones; returns images/s (median) and step seconds."""
    distribution = select_strategy(strategy)
    input_shape = (*size, 3)
    with distribution.scope():
        trainer = FaceTrainer(
            backbones.get_backbone(backbone, input_shape=input_shape), heads.get_head(head, classes)
        )
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
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
    for index in range(warmup + steps):
        started = time.perf_counter()
        logs = step(next(iterator))
        float(distribution.reduce("mean", logs["loss"], axis=None))  # waits for the step to finish
        if index >= warmup:
            durations.append(time.perf_counter() - started)
    median = statistics.median(durations)
    return {"images_per_second": batch / median, "step_seconds": median, "replicas": distribution.num_replicas_in_sync}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="iresnet18", help=f"one of {', '.join(backbones.available())}")
    parser.add_argument("--head", default="arcface", help=f"one of {', '.join(heads.available())}")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strategy", default="auto", choices=("auto", "mirrored", "default"))
    args = parser.parse_args(argv)
    try:
        result = benchmark(
            args.backbone, args.head, args.batch, tuple(args.size), args.classes, args.warmup, args.steps,
            args.strategy,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    print(
        f"{args.backbone} + {args.head}, batch {args.batch}, {args.size[0]}x{args.size[1]}, {args.classes} classes, "
        f"{device} x{result['replicas']}: {result['images_per_second']:.1f} images/s "
        f"(median step {result['step_seconds'] * 1000:.0f} ms over {args.steps} steps)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
