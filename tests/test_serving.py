"""serving.server / serving.client / benchmarks.bench_serving on 127.0.0.1: Predict, GetModelMetadata and
GetModelStatus against the exported model, every bad request's gRPC status (the next good one still succeeds),
validation from the tensor header before any allocation, the Predict queue under load, message limits, pickup of a
new version and retry of a failed one, no server internals in error messages, the client CLI on PNG files (and names
it cannot list), and the server CLI's clean shutdown."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.client import embed_files, main as client_main
from serving.errors import ServingError
from serving.requests import checked_inputs
from serving.server import ModelServer, PredictQueue, read_model_config
from serving.versions import LoadedVersion
from serving.server import main as server_main
from tfface import backbones
from tfface.export import export_run
from tfface.training.config import config_hash, load_config, save_config
from benchmarks.bench_serving import benchmark, main as bench_main

REPO = Path(__file__).resolve().parents[1]
INPUT_SHAPE = (20, 16, 3)
EMBEDDING_SIZE = 8
MAX_BATCH = 2048
MAX_CONCURRENT = 2
MAX_QUEUE = 40
State = get_model_status_pb2.ModelVersionStatus.State


def write_run(run_dir: Path, seed: int) -> Path:
    """A training run dir by hand: a `tiny` backbone with seeded random weights, config.yaml and run.json."""
    run_dir.mkdir(parents=True)
    config = load_config(None, ["backbone.name=tiny", f"backbone.options={{embedding_size: {EMBEDDING_SIZE}}}"])
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=EMBEDDING_SIZE)
    rng = np.random.default_rng(seed)
    for variable in backbone.trainable_variables:
        variable.assign(rng.normal(0.0, 0.5, size=variable.shape).astype("float32"))
    backbone.save_weights(str(run_dir / "backbone.weights.h5"))
    save_config(config, str(run_dir / "config.yaml"))
    (run_dir / "run.json").write_text(json.dumps({
        "backbone": "tiny", "input_shape": list(INPUT_SHAPE), "embedding_size": EMBEDDING_SIZE, "num_classes": 3,
        "config_hash": config_hash(config),
    }))
    return run_dir


def keras_embeddings(run_dir: Path, uint8_images: np.ndarray) -> np.ndarray:
    """L2-normalised embeddings of the run's Keras backbone, preprocessing and normalisation done in numpy."""
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=EMBEDDING_SIZE)
    backbone.load_weights(str(run_dir / "backbone.weights.h5"))
    normalized = ((uint8_images.astype(np.float64) - 127.5) / 128.0).astype(np.float32)
    raw = backbone(normalized, training=False)["embedding"].numpy().astype(np.float64)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serving")
    return {"v1": write_run(root / "run1", seed=1), "v2": write_run(root / "run2", seed=2), "root": root}


@pytest.fixture(scope="module")
def base_path(runs) -> Path:
    base = runs["root"] / "models" / "tiny"
    export_run(runs["v1"], base / "1")
    return base


@pytest.fixture(scope="module")
def server(base_path):
    with ModelServer(
        {"tiny": str(base_path)}, port=0, max_concurrent=MAX_CONCURRENT, max_queue=MAX_QUEUE, max_batch_size=MAX_BATCH,
        poll_seconds=0.2,
    ) as running:
        yield running


def stubs(port: int):
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    return (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def predict_request(images, model="tiny", signature="", key="images") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(images))
    return request


def uint8_images(count: int, shape=INPUT_SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape)).astype(np.uint8)


def status_of(model_stub, version=None, model="tiny") -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    response = model_stub.GetModelStatus(request, timeout=10)
    return {entry.version: (entry.state, entry.status.error_message) for entry in response.model_version_status}


def test_predict_returns_the_keras_embeddings(server, runs):
    prediction, _ = stubs(server.port)
    images = uint8_images(5)
    response = prediction.Predict(predict_request(images), timeout=30)
    assert response.model_spec.name == "tiny" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    embeddings = tf.make_ndarray(response.outputs["embedding"])
    np.testing.assert_allclose(embeddings, keras_embeddings(runs["v1"], images), atol=1e-5)


def test_metadata_lists_the_signatures_and_status_says_available(server):
    prediction, model_service = stubs(server.port)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    response = prediction.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert set(signature_map.signature_def) == {"serving_default", "embed_normalized", "embed_flip"}
    images = signature_map.signature_def["serving_default"].inputs["images"]
    assert [dim.size for dim in images.tensor_shape.dim] == [-1, 20, 16, 3]
    assert status_of(model_service) == {1: (State.AVAILABLE, "")}
    assert status_of(model_service, version=1) == {1: (State.AVAILABLE, "")}


def _with_version(request, version):
    request.model_spec.version.value = version
    return request


def _with_label(request, label):
    request.model_spec.version_label = label
    return request


def _with_filter(request, name):
    request.output_filter.append(name)
    return request


def _with_truncated_content(request):
    request.inputs["images"].tensor_content = request.inputs["images"].tensor_content[:-7]
    return request


def raw_request(dims, content: bytes = b"", int_vals=(), dtype=types_pb2.DT_UINT8) -> predict_pb2.PredictRequest:
    """A Predict request whose 'images' TensorProto is written field by field (dims as given, unchecked)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content, int_val=list(int_vals))
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    request.inputs["images"].CopyFrom(proto)
    return request


def _metadata(model="tiny", fields=("signature_def",)):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = model
    return request


BAD_PREDICTS = {
    "unknown model": (lambda: predict_request(uint8_images(2), model="nobody"), grpc.StatusCode.NOT_FOUND,
                      "unknown model 'nobody'; serving: tiny"),
    "unknown version": (lambda: _with_version(predict_request(uint8_images(2)), 99), grpc.StatusCode.NOT_FOUND,
                        "version 99 is not being served"),
    "version label": (lambda: _with_label(predict_request(uint8_images(2)), "stable"), grpc.StatusCode.NOT_FOUND,
                      "unknown version label 'stable'"),
    "unknown signature": (lambda: predict_request(uint8_images(2), signature="classify"), grpc.StatusCode.NOT_FOUND,
                          "signature 'classify' not found"),
    "wrong dtype": (lambda: predict_request(uint8_images(2).astype(np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
                    "input 'images' must be DT_UINT8, got DT_FLOAT"),
    "wrong size": (lambda: predict_request(uint8_images(2, shape=(16, 20, 3))), grpc.StatusCode.INVALID_ARGUMENT,
                   r"must have shape [N, 20, 16, 3], got [2, 16, 20, 3]"),
    "wrong rank": (lambda: predict_request(uint8_images(2)[0]), grpc.StatusCode.INVALID_ARGUMENT,
                   "got [20, 16, 3]"),
    "empty batch": (lambda: predict_request(uint8_images(0)), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    "oversized batch": (lambda: predict_request(uint8_images(MAX_BATCH + 1)), grpc.StatusCode.INVALID_ARGUMENT,
                        f"batch of {MAX_BATCH + 1} is larger than the server's max_batch_size {MAX_BATCH}"),
    "wrong input key": (lambda: predict_request(uint8_images(2), key="pixels"), grpc.StatusCode.INVALID_ARGUMENT,
                        "missing ['images'], unexpected ['pixels']"),
    "unknown output": (lambda: _with_filter(predict_request(uint8_images(2)), "logits"),
                       grpc.StatusCode.INVALID_ARGUMENT, "output_filter names unknown output(s) ['logits']"),
    "malformed tensor": (lambda: _with_truncated_content(predict_request(uint8_images(2))),
                         grpc.StatusCode.INVALID_ARGUMENT,
                         "input 'images' is not a valid tensor: tensor_content has 1913 bytes, shape [2, 20, 16, 3] "
                         "of DT_UINT8 needs 1920"),
    # Issue 19 item 6: each of these is refused from the header, before an array is built.
    "huge batch, one value": (lambda: raw_request([200000, 20, 16, 3], int_vals=[7]),
                              grpc.StatusCode.INVALID_ARGUMENT,
                              f"batch of 200000 is larger than the server's max_batch_size {MAX_BATCH}"),
    "2^40 batch": (lambda: raw_request([2 ** 40, 20, 16, 3], int_vals=[7]), grpc.StatusCode.INVALID_ARGUMENT,
                   f"batch of {2 ** 40} is larger than the server's max_batch_size"),
    "negative dim": (lambda: raw_request([-1, 20, 16, 3], content=uint8_images(2).tobytes()),
                     grpc.StatusCode.INVALID_ARGUMENT, "input 'images' has a negative dimension: [-1, 20, 16, 3]"),
    "int_val out of range": (lambda: raw_request([1, 20, 16, 3], int_vals=[300]), grpc.StatusCode.INVALID_ARGUMENT,
                             "input 'images': value 300 is out of range for DT_UINT8 [0, 255]"),
    "negative int_val": (lambda: raw_request([1, 20, 16, 3], int_vals=[-1]), grpc.StatusCode.INVALID_ARGUMENT,
                         "input 'images': value -1 is out of range for DT_UINT8 [0, 255]"),
    "too few values": (lambda: raw_request([1, 20, 16, 3], int_vals=[3, 4]), grpc.StatusCode.INVALID_ARGUMENT,
                       "2 values in int_val for shape [1, 20, 16, 3] (960 elements; give all of them or 1"),
    "too many values": (lambda: raw_request([1, 20, 16, 3], int_vals=[1] * 961), grpc.StatusCode.INVALID_ARGUMENT,
                        "961 values in int_val"),
    "no values": (lambda: raw_request([1, 20, 16, 3]), grpc.StatusCode.INVALID_ARGUMENT, "0 values in int_val"),
    # Issue 28 items 10 and 11: an unknown dtype enum was INTERNAL; echoed input had no bound, so a large one made
    # the status too big for gRPC's headers (the client saw RESOURCE_EXHAUSTED "Stream removed")
    "unknown dtype enum": (lambda: raw_request([1, 20, 16, 3], int_vals=[7], dtype=999),
                           grpc.StatusCode.INVALID_ARGUMENT, "input 'images' must be DT_UINT8, got unknown dtype 999"),
    "100000 dims": (lambda: raw_request([1] * 100000), grpc.StatusCode.INVALID_ARGUMENT,
                    "input 'images' has 100000 dims; at most 32 are accepted"),
    "20000 input keys": (lambda: _with_keys(predict_request(uint8_images(1)), 20000), grpc.StatusCode.INVALID_ARGUMENT,
                         "missing [], unexpected 20000 keys, first ['k00000', 'k00001', 'k00002']"),
    "1 MB model name": (lambda: predict_request(uint8_images(1), model="m" * (1 << 20)), grpc.StatusCode.NOT_FOUND,
                        "unknown model '" + "m" * 80 + f"... ({(1 << 20) - 80} more characters)'; serving: tiny"),
    "1 MB signature name": (lambda: predict_request(uint8_images(1), signature="s" * (1 << 20)),
                            grpc.StatusCode.NOT_FOUND, "signature '" + "s" * 80 + "... ("),
    "1 MB version label": (lambda: _with_label(predict_request(uint8_images(1)), "v" * (1 << 20)),
                           grpc.StatusCode.NOT_FOUND, "unknown version label '" + "v" * 80 + "... ("),
    "22 dims": (lambda: raw_request([1, 20, 16] + [3] * 20, int_vals=[7]),
                               grpc.StatusCode.INVALID_ARGUMENT, "must have shape [N, 20, 16, 3], got [1, 20, 16, 3, 3"),
}


def _with_keys(request, count):
    for index in range(count):
        request.inputs[f"k{index:05d}"].dtype = types_pb2.DT_UINT8
    return request


@pytest.mark.parametrize("case", sorted(BAD_PREDICTS))
def test_bad_predict_gets_its_status_and_the_next_good_one_succeeds(server, case):
    prediction, _ = stubs(server.port)
    make_request, code, message = BAD_PREDICTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(make_request(), timeout=30)
    assert caught.value.code() == code
    assert message in caught.value.details() and len(caught.value.details()) <= 1024
    good = prediction.Predict(predict_request(uint8_images(1)), timeout=30)
    assert tf.make_ndarray(good.outputs["embedding"]).shape == (1, EMBEDDING_SIZE)


def test_a_bad_header_is_refused_before_anything_is_allocated(server, runs):
    """Issue 19 item 6: a 42-byte request claiming a [200000, 20, 16, 3] batch filled from one value made the server
    build the 192 MB array before the batch check; now the refusal allocates (almost) nothing."""
    prediction, _ = stubs(server.port)
    request = raw_request([200000, 20, 16, 3], int_vals=[7])
    assert request.ByteSize() < 64
    tracemalloc.start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            prediction.Predict(request, timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert peak < 8 << 20, f"{peak} bytes allocated while refusing the request"
    # A single value still fills a valid shape, as in TensorFlow.
    filled = prediction.Predict(raw_request([2, 20, 16, 3], int_vals=[7]), timeout=30)
    expected = keras_embeddings(runs["v1"], np.full((2, *INPUT_SHAPE), 7, np.uint8))
    np.testing.assert_allclose(tf.make_ndarray(filled.outputs["embedding"]), expected, atol=1e-5)


def test_a_tensor_over_the_message_limit_is_refused_from_its_dims():
    """With free height and width in the signature, a one-value request for a [1, 10^5, 10^5, 3] image (30 GB) is
    refused from its dims, before any array exists."""
    definition = meta_graph_pb2.SignatureDef()
    info = definition.inputs["images"]
    info.dtype = types_pb2.DT_UINT8
    for size in (-1, -1, -1, 3):
        info.tensor_shape.dim.add(size=size)
    request = raw_request([1, 100000, 100000, 3], int_vals=[1])
    with pytest.raises(ServingError, match=r"needs 30000000000 bytes, more than the server's 1048576-byte"):
        checked_inputs(definition, request.inputs, max_batch_size=8, max_tensor_bytes=1 << 20)
    arrays = checked_inputs(definition, raw_request([1, 4, 5, 3], int_vals=[9]).inputs, 8, 1 << 20)
    np.testing.assert_array_equal(arrays["images"], np.full((1, 4, 5, 3), 9, np.uint8))


def test_bad_metadata_and_status_requests_get_their_status(server):
    prediction, model_service = stubs(server.port)
    for request, code, message in (
        (_metadata(model="nobody"), grpc.StatusCode.NOT_FOUND, "unknown model 'nobody'"),
        (_metadata(fields=()), grpc.StatusCode.INVALID_ARGUMENT, "metadata_field is empty"),
        (_metadata(fields=("signature_def", "labels")), grpc.StatusCode.INVALID_ARGUMENT, "['labels'] not supported"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            prediction.GetModelMetadata(request, timeout=10)
        assert caught.value.code() == code and message in caught.value.details()
    for model, version, message in (("nobody", None, "unknown model"), ("tiny", 5, "has no version 5")):
        with pytest.raises(grpc.RpcError) as caught:
            status_of(model_service, version=version, model=model)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and message in caught.value.details()
    assert status_of(model_service) == {1: (State.AVAILABLE, "")}


def test_under_load_good_requests_queue_and_metadata_is_always_answered(server, runs):
    """Issue 19 item 7: 24 clients against 2 Predict slots (main refused a fifth of such calls with "Concurrent RPC
    limit exceeded"); every Predict is answered right, and so is every metadata and status call made meanwhile."""
    images = uint8_images(8, seed=5)
    expected = keras_embeddings(runs["v1"], images)

    def predict_three_times(_):
        prediction, _ = stubs(server.port)
        return [tf.make_ndarray(prediction.Predict(predict_request(images), timeout=60).outputs["embedding"])
                for _ in range(3)]

    def control_calls(_):
        prediction, model_service = stubs(server.port)
        response = prediction.GetModelMetadata(_metadata(), timeout=60)
        return response.model_spec.version.value, status_of(model_service)

    with futures.ThreadPoolExecutor(max_workers=32) as pool:
        predictions = [pool.submit(predict_three_times, index) for index in range(24)]
        controls = [pool.submit(control_calls, index) for index in range(8)]
        for future in predictions:
            for embeddings in future.result():
                np.testing.assert_allclose(embeddings, expected, atol=1e-5)
        assert [future.result() for future in controls] == [(1, {1: (State.AVAILABLE, "")})] * 8


def test_a_full_queue_is_resource_exhausted_and_a_long_wait_deadline_exceeded(server):
    prediction, model_service = stubs(server.port)
    slots = [server.queue.slot() for _ in range(MAX_CONCURRENT)]
    for slot in slots:
        slot.__enter__()  # as if MAX_CONCURRENT Predict calls were running
    try:
        with pytest.raises(grpc.RpcError) as caught:
            prediction.Predict(predict_request(uint8_images(1)), timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert status_of(model_service) == {1: (State.AVAILABLE, "")}  # other calls are answered meanwhile
        waiting = threading.Thread(target=lambda: prediction.Predict(predict_request(uint8_images(1)), timeout=30))
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive()  # queued, not refused
    finally:
        for slot in slots:
            slot.__exit__(None, None, None)
    waiting.join(timeout=30)
    assert not waiting.is_alive()

    queue = PredictQueue(max_concurrent=1, max_queue=1, timeout=5.0)
    waiter_slot = queue.slot()
    with queue.slot():
        waiter = threading.Thread(target=waiter_slot.__enter__)
        waiter.start()
        time.sleep(0.2)
        with pytest.raises(ServingError, match="1 Predict calls running and 1 queued") as refused:
            with queue.slot():
                pass
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    waiter.join(timeout=5)  # it got the freed slot, and holds it
    assert not waiter.is_alive()
    with pytest.raises(ServingError, match=r"no Predict slot freed within 0.1 s") as late:
        with queue.slot(time_remaining=0.1):
            pass
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    waiter_slot.__exit__(None, None, None)
    with queue.slot(time_remaining=0.1):
        pass


def test_unforeseen_errors_send_no_paths_or_exception_text(server, monkeypatch, caplog):
    """Issue 19 item 9: a model failing with a message holding a server path is logged; the client gets INTERNAL
    (or INVALID_ARGUMENT for TF's InvalidArgumentError) with a log reference only."""
    prediction, _ = stubs(server.port)
    secret = "/srv/secret/models/tiny/1/variables: disk on fire"
    for error, code in ((RuntimeError(secret), grpc.StatusCode.INTERNAL),
                        (tf.errors.InvalidArgumentError(None, None, secret), grpc.StatusCode.INVALID_ARGUMENT)):
        def failing_run(self, name, inputs, error=error):
            raise error

        monkeypatch.setattr(LoadedVersion, "run", failing_run)
        with caplog.at_level("ERROR", logger="serving"):
            with pytest.raises(grpc.RpcError) as caught:
                prediction.Predict(predict_request(uint8_images(1)), timeout=30)
        assert caught.value.code() == code
        details = caught.value.details()
        assert "/srv" not in details and "fire" not in details and "\n" not in details
        reference = re.search(r"\[([0-9a-f]{8})\]; the server log has the details$", details).group(1)
        assert any(reference in record.getMessage() and secret in (record.exc_text or "") + str(record.exc_info)
                   for record in caplog.records)
        caplog.clear()
    monkeypatch.undo()
    prediction.Predict(predict_request(uint8_images(1)), timeout=30)


def test_messages_over_the_4_mb_grpc_default_pass_both_ways(server, runs):
    prediction, _ = stubs(server.port)
    images = uint8_images(1200)
    normalized = ((images.astype(np.float32) - 127.5) / 128.0)
    assert normalized.nbytes > 4 << 20
    response = prediction.Predict(predict_request(normalized, signature="embed_normalized"), timeout=60)
    embeddings = tf.make_ndarray(response.outputs["embedding"])
    np.testing.assert_allclose(embeddings[:3], keras_embeddings(runs["v1"], images[:3]), atol=1e-5)
    assert embeddings.shape == (1200, EMBEDDING_SIZE)


def test_a_new_version_is_picked_up_and_a_broken_one_reported(runs, base_path, tmp_path):
    base = tmp_path / "tiny"
    shutil.copytree(base_path / "1", base / "1")
    images = uint8_images(3)
    with ModelServer({"tiny": str(base)}, port=0, poll_seconds=0.1) as running:
        prediction, model_service = stubs(running.port)
        export_run(runs["v2"], base / "2")
        deadline = time.time() + 60
        while status_of(model_service).get(2, (None,))[0] != State.AVAILABLE and time.time() < deadline:
            time.sleep(0.1)
        assert status_of(model_service) == {2: (State.AVAILABLE, ""), 1: (State.END, "")}
        response = prediction.Predict(predict_request(images), timeout=30)
        assert response.model_spec.version.value == 2
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["embedding"]), keras_embeddings(runs["v2"], images), atol=1e-5
        )
        with pytest.raises(grpc.RpcError) as caught:
            prediction.Predict(_with_version(predict_request(images), 1), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        while 3 not in status_of(model_service) and time.time() < deadline:
            time.sleep(0.1)
        state, error = status_of(model_service, version=3)[3]
        assert (state, error) == (State.END, "version 3 failed to load; the server log has the details")  # no path
        assert prediction.Predict(predict_request(images), timeout=30).model_spec.version.value == 2


def test_a_half_written_version_is_loaded_once_complete(runs, base_path, tmp_path):
    """Issue 19 item 8: version 2 seen with its graph but without its variables fails; once the variables arrive
    it is retried and served."""
    base = tmp_path / "tiny"
    shutil.copytree(base_path / "1", base / "1")
    complete = tmp_path / "export2"
    export_run(runs["v2"], complete)
    images = uint8_images(3)
    with ModelServer({"tiny": str(base)}, port=0, poll_seconds=0.1) as running:
        prediction, model_service = stubs(running.port)
        (base / "2").mkdir()
        shutil.copy(complete / "saved_model.pb", base / "2" / "saved_model.pb")  # the copy has begun
        deadline = time.time() + 180
        while 2 not in status_of(model_service) or status_of(model_service)[2][0] == State.LOADING:
            assert time.time() < deadline
            time.sleep(0.1)
        assert status_of(model_service)[2] == (State.END, "version 2 failed to load; the server log has the details")
        time.sleep(0.5)  # several polls: an unchanged failed version is not reloaded
        assert status_of(model_service)[2][0] == State.END
        assert prediction.Predict(predict_request(images), timeout=30).model_spec.version.value == 1
        for item in complete.iterdir():  # the copy completes
            if item.name != "saved_model.pb":
                (shutil.copytree if item.is_dir() else shutil.copy)(item, base / "2" / item.name)
        while status_of(model_service).get(2, (None,))[0] != State.AVAILABLE:
            assert time.time() < deadline
            time.sleep(0.1)
        response = prediction.Predict(predict_request(images), timeout=30)
        assert response.model_spec.version.value == 2
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["embedding"]), keras_embeddings(runs["v2"], images), atol=1e-5
        )


def test_client_cli_embeds_png_files_like_the_keras_backbone(server, runs, tmp_path, capsys):
    folder = tmp_path / "faces" / "alice"
    folder.mkdir(parents=True)
    pixels = uint8_images(5, shape=(20, 16, 3), seed=3)  # the model's input size: crops, sent as they are
    for index, image in enumerate(pixels[:4]):
        Image.fromarray(image).save(folder / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "bob.png"
    Image.fromarray(pixels[4]).save(single)
    out = tmp_path / "out" / "emb.npy"
    target = f"127.0.0.1:{server.port}"

    assert client_main(["--target", target, "--model", "tiny", "--out", str(out), "--batch_size", "3",
                        str(tmp_path / "faces"), str(single)]) == 0
    files = out.with_suffix(".txt").read_text().splitlines()
    assert files == [str(folder / f"{index}.png") for index in range(4)] + [str(single)]
    assert sorted(path.name for path in out.parent.iterdir()) == ["emb.npy", "emb.txt"]  # no temporary left
    expected = keras_embeddings(runs["v1"], pixels)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)

    float_path, _ = embed_files(target, "tiny", [single], signature="embed_normalized", progress=False)
    np.testing.assert_allclose(float_path, expected[4:], atol=1e-5)

    capsys.readouterr()
    photo = tmp_path / "photo.png"  # a photo of another size is refused, never squashed to fit
    Image.fromarray(uint8_images(1, shape=(30, 25, 3), seed=4)[0]).save(photo)
    assert client_main(["--target", target, "--model", "tiny", "--out", str(out), str(photo)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {photo} is 25 x 30 pixels but the model takes 16 x 20 (w x h): give --align to detect and align "
        f"its face, or crops of that size")
    assert client_main(["--target", target, "--model", "nobody", "--out", str(out), str(single)]) == 1
    assert "error: " + target + ": NOT_FOUND: unknown model 'nobody'" in capsys.readouterr().err
    assert client_main(["--target", target, "--model", "tiny", "--out", str(out), str(tmp_path / "nowhere")]) == 2
    assert "error: image or folder not found" in capsys.readouterr().err
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert client_main(["--target", target, "--model", "tiny", "--out", str(blocked / "emb.npy"), str(single)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {blocked / 'emb.npy'}: {blocked} is not a folder"


def test_bench_serving_reports_latency_and_throughput(server, capsys):
    result = benchmark(f"127.0.0.1:{server.port}", "tiny", clients=2, seconds=0.5, batch=2)
    assert result["calls"] > 0 and result["control_calls"] > 0 and result["failures"] == {}
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["images_per_second"] > 0
    # Clients beyond the server's Predict slots queue instead of failing.
    assert bench_main(["--target", f"127.0.0.1:{server.port}", "--model", "tiny", "--clients", "5",
                       "--seconds", "0.3", "--batch", "4"]) == 0
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms, [\d.]+ images/s \(\d+ calls, \d+ metadata/status calls\), "
                     r"failures: none$", capsys.readouterr().out.strip())


def test_client_refuses_names_it_cannot_list_one_a_line(server, tmp_path, capsys):
    """Issue 19 item 10: a file name with a newline gave EMB.txt one line more than EMB.npy has rows (and one not
    valid UTF-8 a traceback); both are refused by name before any call, and nothing is written."""
    target = f"127.0.0.1:{server.port}"
    out = tmp_path / "out" / "emb.npy"
    out.parent.mkdir()
    for name, shown in (("two\nlines.png", "two\\nlines.png"), ("para\u2029graph.png", "para\\u2029graph.png"),
                        (os.fsdecode(b"caf\xe9.png"), "caf\\udce9.png")):
        folder = tmp_path / f"faces{len(shown)}"
        folder.mkdir()
        Image.fromarray(uint8_images(1, seed=1)[0]).save(folder / "plain.png")
        Image.fromarray(uint8_images(1, seed=2)[0]).save(folder / name)
        capsys.readouterr()
        assert client_main(["--target", target, "--model", "tiny", "--out", str(out), str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: file name ") and err.endswith("; rename it") and shown in err, err
        assert "\n" not in err and list(out.parent.iterdir()) == []


def test_read_model_config_accepts_name_and_base_path_only(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(
        'model_config_list {\n'
        '  config { name: "tiny" base_path: "/models/tiny" model_platform: "tensorflow" }\n'
        '  config { name: "big" base_path: "/models/big" }\n'
        '}\n'
    )
    assert read_model_config(str(config)) == {"tiny": "/models/tiny", "big": "/models/big"}
    assert read_model_config(str(REPO / "serving" / "models.config")) == {"arcface": "/models/arcface"}
    config.write_text('model_config_list { config { name: "tiny" base_path: "/m" '
                      'model_version_policy { all {} } } }')
    with pytest.raises(ValueError, match="model 'tiny': unsupported setting\\(s\\) model_version_policy"):
        read_model_config(str(config))


def test_server_cli_serves_on_loopback_and_stops_on_sigterm(base_path):
    command = [sys.executable, "-m", "serving.server", "--model_name", "tiny", "--model_base_path", str(base_path),
               "--port", "0", "--rest_api_port", "8501", "--file_system_poll_wait_seconds", "0.2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        while not any(line.startswith("serving tiny on ") for line in lines) and time.time() < deadline:
            assert process.poll() is None, "".join(lines)
            time.sleep(0.1)
        address = next(line for line in lines if line.startswith("serving tiny on ")).split()[-1]
        assert address.startswith("127.0.0.1:")
        _, model_service = stubs(int(address.split(":")[1]))
        assert status_of(model_service) == {1: (State.AVAILABLE, "")}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    assert "stopped\n" in lines, "".join(lines)
    assert any("--rest_api_port 8501 ignored" in line for line in lines)


@pytest.mark.parametrize("module", ["serving.server", "trainers.train", "tools.evaluate"])
def test_the_server_trainer_and_evaluator_run_onednn_kernels(module):
    environment = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    probe = (f"import {module}, os; from tensorflow.python.util import _pywrap_util_port as port; "
             "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], port.IsMklEnabled())")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True"]


def test_prefer_onednn_leaves_the_users_setting():
    probe = "from tfface import cli; import os; cli.prefer_onednn(); print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]


def test_server_cli_refuses_a_missing_base_path_and_a_busy_port(server, base_path, tmp_path, capsys):
    assert server_main(["--model_name", "tiny", "--model_base_path", str(tmp_path / "none"), "--port", "0"]) == 2
    assert f"error: model 'tiny': base path not found: {tmp_path / 'none'}" in capsys.readouterr().err
    assert server_main(["--model_name", "tiny", "--model_base_path", str(base_path), "--port", str(server.port)]) == 2
    assert f"error: cannot listen on 127.0.0.1:{server.port}" in capsys.readouterr().err


def test_client_refuses_a_decompression_bomb_in_one_line(server, tmp_path, capsys):
    """Issue 28 item 8: an image whose header declares 20000 x 20000 pixels was a DecompressionBombError traceback."""
    from test_evaluation_readers import png_declaring

    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(uint8_images(1, seed=1)[0]).save(folder / "plain.png")
    (folder / "bomb.png").write_bytes(png_declaring(20000, 20000))
    out = tmp_path / "out" / "emb.npy"
    code = client_main(["--target", f"127.0.0.1:{server.port}", "--model", "tiny", "--out", str(out), str(folder)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(
        f"error: cannot read image {folder / 'bomb.png'}: too large: Image size (400000000 pixels)"), err
    assert "Traceback" not in err and not out.exists()


def test_a_version_folder_beyond_int64_is_ignored_with_a_warning(runs, base_path, tmp_path, caplog):
    """Issue 28 item 9: a folder 99999999999999999999999 was loaded, then every Predict and GetModelStatus answered
    INTERNAL (its number does not fit the protos' int64), GetModelStatus even after the folder was removed."""
    base = tmp_path / "tiny"
    shutil.copytree(base_path / "1", base / "1")
    shutil.copytree(base_path / "1", base / "99999999999999999999999")
    shutil.copytree(base_path / "1", base / "\u0663")  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit()
    images = uint8_images(2)
    with caplog.at_level("WARNING", logger="serving"):
        with ModelServer({"tiny": str(base)}, port=0, poll_seconds=0.1) as running:
            prediction, model_service = stubs(running.port)
            assert status_of(model_service) == {1: (State.AVAILABLE, "")}
            assert prediction.Predict(predict_request(images), timeout=30).model_spec.version.value == 1
            shutil.rmtree(base / "99999999999999999999999")
            time.sleep(0.3)
            assert status_of(model_service) == {1: (State.AVAILABLE, "")}
    warnings = [record.getMessage() for record in caplog.records if "ignoring version folder" in record.getMessage()]
    assert warnings == [f"model 'tiny': ignoring version folder {base / '99999999999999999999999'}: its number is "
                        f"larger than {2 ** 63 - 1} (versions are int64)"]


def test_a_model_configured_twice_is_refused(tmp_path):
    """Issue 28 item 12: the last entry was served silently; tensorflow_model_server refuses such a config."""
    config = tmp_path / "models.config"
    config.write_text('model_config_list {\n  config { name: "tiny" base_path: "/models/a" }\n'
                      '  config { name: "tiny" base_path: "/models/b" }\n}\n')
    with pytest.raises(ValueError, match=rf"^{config}: model 'tiny' is configured more than once$"):
        read_model_config(str(config))


@pytest.mark.parametrize("flag, value, message", [
    ("--port", "99999", "port must be in [0, 65535] (0: any free port), got 99999"),
    ("--port", "-1", "port must be in [0, 65535] (0: any free port), got -1"),
    ("--max_message_mb", "100000", "max_message_mb must be at most 2047 (gRPC's messages are under 2 GiB), got 100000"),
], ids=["port_99999", "port_minus_1", "max_message_mb_100000"])
def test_server_cli_range_checks_port_and_message_size(base_path, capsys, flag, value, message):
    """Issue 28 item 13: --port 99999 bound port 34463 (99999 mod 65536); --max_message_mb 100000 was an
    OverflowError traceback."""
    argv = ["--model_name", "tiny", "--model_base_path", str(base_path), "--port", "0", flag, value]
    assert server_main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
