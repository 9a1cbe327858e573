"""Where a training step's time goes: a tf.profiler trace of FaceTrainer steps, op self-time summed by part.

    python -m benchmarks.profile_step --backbone mobilefacenet --batch 32 --classes 10000 --steps 2 \\
        [--scale 2] [--ops 20] [--trace-dir DIR]

Builds the step `benchmarks.bench_train` times (synthetic batch, ArcFace head, SGD with momentum 0.9 and weight
decay 5e-4, fp32), runs `--warmup` untimed steps, traces `--steps` steps with `tf.profiler.experimental` and reads the
trace's per-op statistics (TensorFlow's framework_op_stats tool). Each op's self time goes to a part by the layer
its name belongs to (the forward op and its gradient alike): convolution, batch norm, PReLU, other backbone layers,
the head and loss, the optimizer update, and the rest; "unlisted" is the time the profiler saw no TensorFlow op
running: host-side Python, waiting, and XLA-compiled kernels (the fused PReLU in training), which TensorFlow's op
statistics do not list. Prints ms per step and share per part; `--ops N` also lists the N costliest (part, op type)
pairs. Op times on a loaded machine stretch with the load; read the shares.
"""
import argparse
import glob
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfface import backbones, heads  # noqa: E402
from tfface.training import FaceTrainer  # noqa: E402

PARTS = ("convolution", "batch norm", "PReLU", "other backbone layers", "head and loss", "optimizer update", "other",
         "unlisted (host, waiting, XLA kernels)")
LAYER_PARTS = {"Conv2D": "convolution", "DepthwiseConv2D": "convolution", "BatchNormalization": "batch norm",
               "PReLU": "PReLU"}
OPTIMIZER_NAME = re.compile(r"(^|/)(SGD|sgd|optimizer)(/|_|$)|ResourceApply|AssignAddVariableOp")


def build_step(backbone: str, batch: int, size, classes: int, backbone_options: dict):
    """(the tf.function train step, its batch, the backbone model, the head layer) as bench_train builds them."""
    input_shape = (*size, 3)
    trainer = FaceTrainer(backbones.get_backbone(backbone, input_shape=input_shape, **backbone_options),
                          heads.get_head("arcface", classes))
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
    trainer.build_all(input_shape)
    rng = np.random.default_rng(0)
    data = {"image": tf.constant(rng.normal(size=(batch, *input_shape)).astype("float32")),
            "label": tf.constant(rng.integers(0, classes, size=batch).astype("int32"))}
    return tf.function(trainer.train_step), data, trainer.backbone, trainer.head


def op_stats(trace_dir: str) -> list[dict]:
    """framework_op_stats rows of the newest trace under `trace_dir`: type, operation, total_self_time (us)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise RuntimeError(f"the profiler wrote no trace under {trace_dir}")
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([paths[-1]], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"TensorFlow could not read the trace {paths[-1]}")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    return [dict(zip(columns, [cell["v"] if cell else None for cell in row["c"]])) for row in table["rows"]]


def layer_classes(model: keras.Model) -> dict:
    """Layer name -> part, for every layer of the backbone (nested models included)."""
    parts = {}
    for layer in model._flatten_layers(include_self=False):
        parts[layer.name] = next((part for cls, part in LAYER_PARTS.items()
                                  if any(base.__name__ == cls for base in type(layer).__mro__)),
                                 "other backbone layers")
    return parts


def part_of(operation: str, op_type: str, backbone: keras.Model, layers: dict, head_name: str) -> str:
    """The part an op belongs to, from its name scope: [gradient_tape/]model/layer/..., head/..., optimizer."""
    if op_type == "IDLE":
        return PARTS[-1]
    scopes = operation.split("/")
    if scopes[0] == "gradient_tape":
        scopes = scopes[1:]
    strip = re.compile(r"_\d+$")  # tf.function numbers the scopes of a traced function: "stem_conv_1"
    if scopes and strip.sub("", scopes[0]) in (backbone.name, strip.sub("", backbone.name)) and len(scopes) > 1:
        for name in (scopes[1], strip.sub("", scopes[1])):
            if name in layers:
                return layers[name]
        return "other backbone layers"
    if OPTIMIZER_NAME.search(operation) or op_type.startswith("ResourceApply"):
        return "optimizer update"
    if scopes and strip.sub("", scopes[0]) == head_name or "SoftmaxCrossEntropy" in op_type:
        return "head and loss"
    return "other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilefacenet", help=f"one of {', '.join(backbones.available())}")
    parser.add_argument("--scale", type=int, help="mobilefacenet's width scale (2: insightface's mbf)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--ops", type=int, default=0, help="also list the N costliest (part, op type) pairs")
    parser.add_argument("--trace-dir", help="keep the trace here (TensorBoard's profile plugin reads it)")
    args = parser.parse_args(argv)
    if min(args.batch, args.classes, args.steps) < 1 or args.warmup < 1:
        print("profile_step: error: --batch, --classes, --steps and --warmup must be >= 1", file=sys.stderr)
        return 2
    tf.get_logger().setLevel("ERROR")
    options = {} if args.scale is None else {"scale": args.scale}
    step, data, backbone, head = build_step(args.backbone, args.batch, tuple(args.size), args.classes, options)
    for _ in range(args.warmup):
        float(step(data)["loss"])
    with tempfile.TemporaryDirectory() as scratch:
        trace_dir = args.trace_dir or scratch
        tf.profiler.experimental.start(trace_dir)
        started = time.perf_counter()
        for index in range(args.steps):
            with tf.profiler.experimental.Trace("train", step_num=index, _r=1):
                float(step(data)["loss"])
        wall = (time.perf_counter() - started) / args.steps
        tf.profiler.experimental.stop()
        rows = op_stats(trace_dir)
    layers = layer_classes(backbone)
    totals, by_type = defaultdict(float), defaultdict(float)
    for row in rows:
        part = part_of(row["operation"], row["type"], backbone, layers, head.name)
        totals[part] += row["total_self_time"] or 0.0
        by_type[(part, row["type"])] += row["total_self_time"] or 0.0
    traced = sum(totals.values())
    scale = f" scale {args.scale}" if args.scale else ""
    print(f"{args.backbone}{scale} + arcface ({args.classes} classes), batch {args.batch}, {args.size[0]}x"
          f"{args.size[1]}, fp32, {args.steps} traced step(s): {wall * 1000:.0f} ms per step wall, "
          f"{args.batch / wall:.1f} images/s, load average {os.getloadavg()[0]:.1f}")
    print("| part | ms per step | share |\n|---|---|---|")
    for part in PARTS:
        print(f"| {part} | {totals[part] / 1000 / args.steps:.0f} | {totals[part] / max(traced, 1e-9):.1%} |")
    if args.ops > 0:
        print("\n| part | op type | ms per step |\n|---|---|---|")
        for (part, op_type), micros in sorted(by_type.items(), key=lambda item: -item[1])[:args.ops]:
            print(f"| {part} | {op_type} | {micros / 1000 / args.steps:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
