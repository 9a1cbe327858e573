"""Serving load test: N concurrent clients send Predict calls for T seconds to a running model server.

    python -m benchmarks.bench_serving --target 127.0.0.1:8500 --model NAME --clients 4 --seconds 20 --batch 32

Each client has its own gRPC channel and sends one random uint8 batch of the model's input size (read from
GetModelMetadata) after another. Meanwhile one more client alternates GetModelMetadata and GetModelStatus calls
every CONTROL_PERIOD seconds (they must be answered however busy Predict is). Reports p50 / p99 latency of the
successful Predict calls, images/s over the timed window, the number of metadata/status calls, and the failures by
status code. Each client's first call is a warm-up and is not counted.
"""
import argparse
import os
import sys
import threading
import time
from collections import Counter
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfface import cli  # noqa: E402
from serving.client import InputSpec, connect  # noqa: E402

CONTROL_PERIOD = 0.2


def _request(model: str, signature: str, spec: InputSpec, batch: int, seed: int) -> predict_pb2.PredictRequest:
    images = np.random.default_rng(seed).integers(0, 256, size=(batch, *spec.size, 3)).astype(np.uint8)
    if spec.normalize:
        images = (images.astype(np.float32) - 127.5) / 128.0
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[spec.input_key].CopyFrom(tf.make_tensor_proto(images))
    return request


def benchmark(
    target: str, model: str, clients: int = 4, seconds: float = 10.0, batch: int = 1,
    signature: str = "serving_default", timeout: float = 30.0,
) -> Dict:
    """Runs the load test; returns {p50_ms, p99_ms, images_per_second, calls, control_calls, failures {code name:
    count}, metadata and status failures as "control CODE"}."""
    for name, value in (("clients", clients), ("batch", batch)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    with connect(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        spec = InputSpec(stub, model, signature, version=None, timeout=timeout)
    latencies: List[List[float]] = [[] for _ in range(clients)]
    failures: List[Counter] = [Counter() for _ in range(clients)]
    warmed_up = threading.Barrier(clients + 1)
    go = threading.Event()
    window: Dict[str, float] = {}

    def client(index: int) -> None:
        request = _request(model, signature, spec, batch, seed=index)
        with connect(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            try:
                stub.Predict(request, timeout=timeout)
            except grpc.RpcError as error:
                failures[index][f"warm-up {error.code().name}"] += 1
            warmed_up.wait()
            go.wait()
            while True:
                started = time.perf_counter()
                if started >= window["end"]:
                    return
                try:
                    stub.Predict(request, timeout=timeout)
                    latencies[index].append(time.perf_counter() - started)
                except grpc.RpcError as error:
                    failures[index][error.code().name] += 1

    control_calls = Counter()

    def control_client() -> None:
        with connect(target) as channel:
            prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            metadata.model_spec.name = model
            status = get_model_status_pb2.GetModelStatusRequest()
            status.model_spec.name = model
            calls = [(prediction.GetModelMetadata, metadata), (models.GetModelStatus, status)]
            go.wait()
            while time.perf_counter() < window["end"]:
                call, request = calls[control_calls["sent"] % 2]
                control_calls["sent"] += 1
                try:
                    call(request, timeout=timeout)
                except grpc.RpcError as error:
                    control_calls[f"control {error.code().name}"] += 1
                time.sleep(CONTROL_PERIOD)

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    threads.append(threading.Thread(target=control_client, daemon=True))
    for thread in threads:
        thread.start()
    warmed_up.wait()
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + seconds
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - window["start"]
    all_latencies = np.array([value for values in latencies for value in values])
    return {
        "p50_ms": float(np.percentile(all_latencies, 50) * 1000) if all_latencies.size else float("nan"),
        "p99_ms": float(np.percentile(all_latencies, 99) * 1000) if all_latencies.size else float("nan"),
        "images_per_second": all_latencies.size * batch / elapsed,
        "calls": int(all_latencies.size),
        "control_calls": control_calls.pop("sent", 0),
        "failures": dict(sum(failures, control_calls)),
    }


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8500", help="server host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    args = parser.parse_args(argv)
    try:
        result = benchmark(
            args.target, args.model, args.clients, args.seconds, args.batch, args.signature, args.timeout
        )
    except grpc.RpcError as error:
        print(f"error: {args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    failures = ", ".join(f"{code} {count}" for code, count in sorted(result["failures"].items())) or "none"
    print(
        f"{args.model} at {args.target}, {args.clients} clients x batch {args.batch}, {args.seconds:g} s: "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, {result['images_per_second']:.1f} images/s "
        f"({result['calls']} calls, {result['control_calls']} metadata/status calls), failures: {failures}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
