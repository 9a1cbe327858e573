"""Partial FC at scale: bytes of the class centres, their optimizer state and the logits, full FC vs Partial FC,
and a live training step of the head alone (random embeddings stand in for the backbone).

    python -m benchmarks.bench_partial_fc --classes 1000000 --embedding-size 512 --batch 128 --sample-rate 0.1 \\
        --replicas 2 --memory-limit-gib 6
    python -m benchmarks.bench_partial_fc ... --head full      # the full FC (ArcFace) under the same limit

Bytes per replica, float32 (C classes, D embedding size, global batch N over R replicas, n = N / R):
- full FC (centres mirrored on every replica): parameters C D, SGD momentum C D, dense gradient C D, logits and
  their gradient 2 n C;
- Partial FC (replica r owns ceil(C / R) centres, samples k of them): parameters ceil(C / R) D, momentum
  ceil(C / R) D, the gathered centres and their gradient rows 2 k D, logits and their gradient 2 N k (the whole
  global batch meets this replica's sampled centres).
`--memory-limit-gib` caps the process's data segment (RLIMIT_DATA) before TensorFlow starts, so a step that needs
more fails; logical CPU devices stand in for the replicas and share that one limit.
"""
import argparse
import math
import os
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfface import cli  # noqa: E402

HEADS = ("partial", "full")
GIB = 1024**3


def memory_bytes(
    num_classes: int, embedding_size: int, global_batch: int, replicas: int, sample_rate: Optional[float] = None,
    value_bytes: int = 4,
) -> Dict[str, int]:
    """Bytes per replica of the head's state and per-step tensors; `sample_rate=None` is the full FC.

    Keys: parameters, optimizer_state, gradients, logits, total (see the module docstring for the formulas).
    """
    if sample_rate is None:
        rows = num_classes
        parameters = rows * embedding_size
        gradients = num_classes * embedding_size
        logits = 2 * (global_batch // replicas) * num_classes
    else:
        rows = -(-num_classes // replicas)
        sampled = min(rows, max(math.ceil(sample_rate * rows), global_batch))
        parameters = rows * embedding_size
        gradients = 2 * sampled * embedding_size
        logits = 2 * global_batch * sampled
    sizes = {
        "parameters": parameters * value_bytes,
        "optimizer_state": parameters * value_bytes,
        "gradients": gradients * value_bytes,
        "logits": logits * value_bytes,
    }
    sizes["total"] = sum(sizes.values())
    return sizes


def memory_table(num_classes: int, embedding_size: int, global_batch: int, replicas: int, sample_rate: float) -> str:
    """Markdown table of `memory_bytes` for the full FC and Partial FC, GiB per replica."""
    partial = memory_bytes(num_classes, embedding_size, global_batch, replicas, sample_rate)
    rows = [
        ("full FC", memory_bytes(num_classes, embedding_size, global_batch, replicas)),
        (f"Partial FC, rate {sample_rate:g}", partial),
    ]
    keys = ("parameters", "optimizer_state", "gradients", "logits", "total")
    lines = [
        f"| head ({num_classes} classes, D {embedding_size}, batch {global_batch}, {replicas} replica(s)) | "
        + " | ".join(f"{key} GiB" for key in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, sizes in rows:
        lines.append(f"| {name} | " + " | ".join(f"{sizes[key] / GIB:.3f}" for key in keys) + " |")
    return "\n".join(lines)


def _memory_gib() -> Dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of this process in GiB."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024 / GIB
    return values


def configure_replicas(replicas: int) -> None:
    """Without GPUs, splits the CPU into `replicas` logical devices (before TensorFlow initialises; a no-op when it
    already has at least that many)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu) or []
    if len(configured) < replicas and replicas > 1:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def live_steps(
    head: str, num_classes: int, embedding_size: int, global_batch: int, sample_rate: float, replicas: int,
    steps: int = 3,
) -> Dict[str, float]:
    """Builds the head (Partial FC or full ArcFace) over `replicas` GPUs (else logical CPUs) and runs `steps` SGD
    steps on random embeddings; returns the median step seconds (after the first, traced, step), the last loss, the
    process memory (GiB) after building and at the end, and on GPUs the peak GPU memory per device (GiB)."""
    import keras
    import tensorflow as tf

    from tfface.heads import ArcFaceHead, PartialFCHead
    from tfface.training.strategy import mirrored_strategy

    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if global_batch % replicas:
        raise ValueError(f"batch {global_batch} must be divisible by the {replicas} replicas")
    devices = [device.name for device in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
    if len(devices) < replicas:
        raise ValueError(f"{replicas} replicas asked for, {len(devices)} devices visible")
    devices = devices[:replicas]
    strategy = mirrored_strategy(devices) if replicas > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        layer = PartialFCHead(num_classes, sample_rate=sample_rate) if head == "partial" else ArcFaceHead(num_classes)
        layer.build((None, embedding_size))
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)
        optimizer.build(layer.trainable_variables)
    built = _memory_gib()
    local_batch = global_batch // replicas

    def replica_step(step):
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        seed = tf.stack([step, replica])
        embeddings = tf.random.stateless_normal([local_batch, embedding_size], seed)
        labels = tf.random.stateless_uniform([local_batch], seed, maxval=num_classes, dtype=tf.int32)
        variables = layer.sharded_variables if head == "partial" else layer.trainable_variables
        with tf.GradientTape() as tape:
            if head == "partial":
                tape.watch(variables)  # per-replica shards are not trainable variables
            outputs = layer(embeddings, labels, training=True)
            targets = outputs.get("targets", labels)
            per_example = keras.losses.sparse_categorical_crossentropy(targets, outputs["logits"], from_logits=True)
            loss = tf.nn.compute_average_loss(per_example)
        gradients = tape.gradient(loss, variables)
        if head == "partial":
            layer.apply_sharded_gradients(gradients, optimizer)
        else:
            optimizer.apply(gradients, variables)
        return loss

    step_function = tf.function(lambda step: strategy.reduce("SUM", strategy.run(replica_step, args=(step,)), None))
    durations: List[float] = []
    loss = float("nan")
    for step in range(steps):
        started = time.perf_counter()
        loss = float(step_function(tf.constant(step, tf.int64)))
        durations.append(time.perf_counter() - started)
    timed = durations[1:] or durations
    result = {"step_seconds": statistics.median(timed), "loss": loss, "built": built, "end": _memory_gib()}
    if "GPU" in devices[0].upper():
        peaks = [tf.config.experimental.get_memory_info(name.split("device:")[-1])["peak"] for name in devices]
        result["gpu_peak_gib"] = [peak / GIB for peak in peaks]
    return result


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_partial_fc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--replicas", type=int, default=2, help="logical CPU devices (MirroredStrategy replicas)")
    parser.add_argument("--head", choices=HEADS, default="partial", help="which head runs live")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--memory-limit-gib", type=float, default=None, help="RLIMIT_DATA for this process")
    parser.add_argument("--no-live", action="store_true", help="print the byte table only")
    args = parser.parse_args(argv)
    if args.classes < 2 or args.embedding_size < 1 or args.batch < 1 or args.replicas < 1 or args.steps < 1:
        print("error: --classes >= 2, --embedding-size, --batch, --replicas and --steps >= 1", file=sys.stderr)
        return 2
    if not 0 < args.sample_rate <= 1:
        print(f"error: --sample-rate must be in (0, 1], got {args.sample_rate}", file=sys.stderr)
        return 2
    print(memory_table(args.classes, args.embedding_size, args.batch, args.replicas, args.sample_rate))
    if args.no_live:
        return 0
    if args.memory_limit_gib is not None:
        limit = int(args.memory_limit_gib * GIB)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    configure_replicas(args.replicas)
    described = (
        f"{args.head} head, {args.classes} classes, D {args.embedding_size}, batch {args.batch}, "
        f"{args.replicas} replica(s)" + (f", rate {args.sample_rate:g}" if args.head == "partial" else "")
        + (f", memory limit {args.memory_limit_gib:g} GiB" if args.memory_limit_gib else "")
    )
    import tensorflow as tf

    try:
        result = live_steps(
            args.head, args.classes, args.embedding_size, args.batch, args.sample_rate, args.replicas, args.steps
        )
    except (MemoryError, tf.errors.ResourceExhaustedError) as error:
        lines = str(error).splitlines() or [""]
        detail = next((line.strip() for line in lines if "OOM when allocating" in line), lines[0])
        print(
            f"{described}: does not fit ({type(error).__name__}: {detail[:300]}); "
            f"peak {_memory_gib()['VmHWM']:.2f} GiB"
        )
        return 3
    print(
        f"{described}: step {result['step_seconds']:.2f} s (median after the first), loss {result['loss']:.3f}; "
        f"resident {result['built']['VmRSS']:.2f} GiB after building, {result['end']['VmRSS']:.2f} GiB at the end, "
        f"peak {result['end']['VmHWM']:.2f} GiB"
        + (f"; GPU peak {', '.join(f'{gib:.2f}' for gib in result['gpu_peak_gib'])} GiB" if "gpu_peak_gib" in result
           else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
