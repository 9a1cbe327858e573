"""Serving with batching off / on x SavedModel / TFLite, clients sending one face per call, against each model's bare
batch-64 rate, in one run (issue 27).

    python -m benchmarks.bench_serving_modes --model_base_path models/pretrained \
        --batching_parameters_file benchmarks/batching_64.config [--clients 1,8,64] [--seconds 10]

The newest version under --model_base_path must hold model.tflite (tools.export --with_tflite). First the bare
rates: `embed_batch` on 64 random faces, SavedModel (TensorFlow) and model.tflite (LiteRT, all cores), each timed for
--bare_seconds after a warm-up. Then, for each of the four modes, `python -m serving.server` is started on a free
port (--max_concurrent for every mode; batching: --enable_batching with the parameters file; TFLite:
--prefer_tflite_model with TF Serving's default pools), and benchmarks.bench_serving's load test runs --seconds per
client count, each client sending one random face per call. Prints a Markdown table: images/s, p50 and p99 latency,
the rate as a fraction of the bare batch-64 rate of the model served, failed calls. The bare SavedModel and the
servers run TensorFlow with oneDNN's CPU kernels (tfface.cli.prefer_onednn) unless TF_ENABLE_ONEDNN_OPTS is set.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from tfface import cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
cli.prefer_onednn()  # as serving.server does, so that the bare rates run the kernels the servers run

import numpy as np  # noqa: E402

from benchmarks.bench_serving import benchmark  # noqa: E402
from tfface.embedders import (  # noqa: E402
    TFLITE_IN_SAVED_MODEL,
    SavedModelEmbedder,
    TFLiteEmbedder,
    resolve_saved_model,
)
from tfface.errors import ConfigError  # noqa: E402

BARE_BATCH = 64
MODES = (("SavedModel", False), ("SavedModel", True), ("TFLite", False), ("TFLite", True))
SERVER_START_SECONDS = 300


def bare_rate(embed, images: np.ndarray, seconds: float) -> float:
    """Images/s of `embed(images)` over at least `seconds`, after one warm-up call."""
    embed(images)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 2:
        embed(images)
        runs += 1
    return runs * len(images) / (time.perf_counter() - started)


def start_server(arguments: List[str]) -> (subprocess.Popen, int):
    """`python -m serving.server ARGUMENTS --port 0` and the port it printed once serving."""
    server = subprocess.Popen([sys.executable, "-m", "serving.server", *arguments, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + SERVER_START_SECONDS
    for line in server.stdout:
        found = re.match(r"serving .* on [^:]+:(\d+)$", line.strip())
        if found:
            return server, int(found.group(1))
        if time.time() > deadline:
            break
    server.kill()
    raise RuntimeError(f"the server did not start: {' '.join(arguments)}")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()


def run(model_base_path: str, batching_parameters_file: str, clients: List[int], seconds: float,
        bare_seconds: float, max_concurrent: int) -> Dict:
    """{"bare": {model: images/s}, "cells": [{model, batching, clients, p50_ms, p99_ms, images_per_second,
    failures}]}."""
    version = resolve_saved_model(model_base_path, label="--model_base_path")
    if not (version / TFLITE_IN_SAVED_MODEL).is_file():
        raise ConfigError(f"--model_base_path {version}: no {TFLITE_IN_SAVED_MODEL} (export with --with_tflite)")
    savedmodel = SavedModelEmbedder(version)
    images = np.random.default_rng(0).integers(0, 256, (BARE_BATCH, *savedmodel.input_shape)).astype(np.uint8)
    bare = {"SavedModel": bare_rate(savedmodel.embed_batch, images, bare_seconds)}
    del savedmodel
    bare["TFLite"] = bare_rate(TFLiteEmbedder(version / TFLITE_IN_SAVED_MODEL).embed_batch, images, bare_seconds)
    cells = []
    name = "bench"
    for model, batching in MODES:
        arguments = ["--model_name", name, "--model_base_path", model_base_path, "--max_concurrent",
                     str(max_concurrent)]
        if batching:
            arguments += ["--enable_batching", "--batching_parameters_file", batching_parameters_file]
        if model == "TFLite":
            arguments += ["--prefer_tflite_model"]
        server, port = start_server(arguments)
        try:
            for count in clients:
                result = benchmark(f"127.0.0.1:{port}", name, clients=count, seconds=seconds, batch=1)
                cells.append({"model": model, "batching": batching, "clients": count, **result})
                print(f"{model}, batching {'on' if batching else 'off'}, {count} clients: "
                      f"{result['images_per_second']:.1f} images/s, p50 {result['p50_ms']:.1f} ms, "
                      f"p99 {result['p99_ms']:.1f} ms, failures {result['failures'] or 'none'}", flush=True)
        finally:
            stop_server(server)
    return {"bare": bare, "cells": cells}


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_serving_modes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_base_path", required=True, help="model base path; newest version has model.tflite")
    parser.add_argument("--batching_parameters_file", required=True, help="TF Serving BatchingParameters (text)")
    parser.add_argument("--clients", default="1,8,64", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window per cell")
    parser.add_argument("--bare_seconds", type=float, default=10.0, help="timed window per bare rate")
    parser.add_argument("--max_concurrent", type=int, default=64, help="the servers' --max_concurrent")
    args = parser.parse_args(argv)
    try:
        clients = [int(count) for count in args.clients.split(",")]
    except ValueError:
        raise ConfigError(f"--clients must be comma-separated integers, got '{args.clients}'") from None
    if not Path(args.batching_parameters_file).is_file():
        raise ConfigError(f"--batching_parameters_file not found: {args.batching_parameters_file}")
    result = run(args.model_base_path, args.batching_parameters_file, clients, args.seconds, args.bare_seconds,
                 args.max_concurrent)
    bare = result["bare"]
    print(f"\nbare batch {BARE_BATCH}: SavedModel {bare['SavedModel']:.1f} images/s, TFLite {bare['TFLite']:.1f} "
          f"images/s (TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, load average "
          f"{os.getloadavg()[0]:.1f})\n")
    print("| model | batching | clients x 1 face | images/s | / bare batch-64 | p50 ms | p99 ms | failed calls |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in result["cells"]:
        failures = sum(cell["failures"].values())
        print(f"| {cell['model']} | {'on' if cell['batching'] else 'off'} | {cell['clients']} | "
              f"{cell['images_per_second']:.1f} | {cell['images_per_second'] / bare[cell['model']]:.2f} | "
              f"{cell['p50_ms']:.1f} | {cell['p99_ms']:.1f} | {failures} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
