"""serving.batching (--enable_batching): the parameters file in TF Serving's text format (defaults, one line naming a
bad field), merged calls answering as unbatched ones, padding to allowed_batch_sizes, a deadline passing while queued,
the bounded queue, different shapes never merged, and a version swap under batched load failing no call."""
import contextlib
import functools
import shutil
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_serving.apis import get_model_metadata_pb2

from serving.batching import Batcher, BatchingParameters, parse_batching_parameters
from serving.errors import ServingError
from serving.server import ModelServer
from serving.server import main as server_main
from tfface.export import export_run
from test_serving import (  # noqa: F401 - runs and base_path are fixtures
    State, base_path, keras_embeddings, predict_request, runs, status_of, stubs, uint8_images,
)


def test_parameters_file_in_tf_serving_text_format_with_its_defaults():
    text = """
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 2500 }
        thread_pool_name { value: "faces" }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 64
    """
    assert parse_batching_parameters(text) == BatchingParameters(
        max_batch_size=64, batch_timeout_micros=2500, max_enqueued_batches=10, num_batch_threads=BatchingParameters()
        .num_batch_threads, thread_pool_name="faces", allowed_batch_sizes=(8, 64))
    # SharedBatchScheduler's QueueOptions defaults, as TF Serving documents them
    assert parse_batching_parameters("")[:3] == (1000, 0, 10)


@pytest.mark.parametrize("text, message", [
    ("max_batch_size: 8", "b.config: 1:17 : 'max_batch_size: 8': Expected \"{\"."),
    ("max_batch_sise { value: 8 }", 'has no field named "max_batch_sise"'),
    ("num_batch_threads { value: 0 }", "b.config: num_batch_threads must be >= 1, got 0"),
    ("batch_timeout_micros { value: -1 }", "b.config: batch_timeout_micros must be >= 0, got -1"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "allowed_batch_sizes must end with max_batch_size 8"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 4 allowed_batch_sizes: 8",
     "allowed_batch_sizes must be positive and increasing, got [8, 4, 8]"),
    ("pad_variable_length_inputs: true", "b.config: pad_variable_length_inputs is not supported"),
])
def test_a_malformed_parameters_file_is_one_line_naming_the_field(text, message, base_path, tmp_path, capsys):
    parameters = tmp_path / "b.config"
    parameters.write_text(text)
    with pytest.raises(ValueError) as caught:
        parse_batching_parameters(text, "b.config")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert server_main(["--model_name", "tiny", "--model_base_path", str(base_path), "--port", "0",
                        "--enable_batching", "--batching_parameters_file", str(parameters)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {parameters}: ")


class FakeVersion:
    """A model version whose run doubles its input after `delay` seconds and records each run's batch size."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.sizes = delay, []
        self.started = threading.Event()

    def run(self, name, inputs):
        self.started.set()
        self.sizes.append(len(inputs["x"]))
        time.sleep(self.delay)
        return {"y": inputs["x"] * 2.0}


def test_a_deadline_passing_while_queued_is_deadline_exceeded_and_the_rest_of_the_batch_answers():
    batcher = Batcher(BatchingParameters(max_batch_size=8, num_batch_threads=1)).start()
    version = FakeVersion(delay=0.6)
    try:
        with futures.ThreadPoolExecutor(4) as pool:
            def call(value, rows, deadline):
                return batcher.run("m", version, "s", {"x": np.full((rows, 3), value, "f4")}, deadline)

            busy = pool.submit(call, 1.0, 1, 10.0)  # takes the only batch thread
            assert version.started.wait(5)
            late = pool.submit(call, 2.0, 2, 0.2)  # queued behind it; its deadline passes while queued
            patient = pool.submit(call, 3.0, 3, 10.0)  # same batch as `late`
            with pytest.raises(ServingError, match="deadline passed after 0.2") as caught:
                late.result()
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            np.testing.assert_array_equal(patient.result()["y"], np.full((3, 3), 6.0))
            np.testing.assert_array_equal(busy.result()["y"], np.full((1, 3), 2.0))
        assert version.sizes == [1, 3]  # the late call left its batch before it ran
    finally:
        batcher.stop()


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"not true within {seconds} s"
        time.sleep(0.01)


def gated_version():
    """A FakeVersion whose runs record their thread's name and wait for the returned Event: (version, release,
    thread names)."""
    version, release, threads = FakeVersion(), threading.Event(), []
    original_run = version.run

    def gated_run(name, inputs):
        threads.append(threading.current_thread().name)
        release.wait(10)
        return original_run(name, inputs)

    version.run = gated_run
    return version, release, threads


def test_a_call_that_makes_its_batch_ready_runs_it_on_its_own_thread_while_a_run_is_free():
    batcher = Batcher(BatchingParameters(max_batch_size=4, num_batch_threads=1)).start()  # timeout 0: ready at once
    version, release, threads = gated_version()
    try:
        with futures.ThreadPoolExecutor(2, thread_name_prefix="caller") as pool:
            call = functools.partial(batcher.run, "m", version, "s", {"x": np.ones((1, 3), "f4")}, 10.0)
            first = pool.submit(call)  # the only run is free: runs on its caller's thread
            wait_for(lambda: threads)
            second = pool.submit(call)  # the run is busy: queued for a batch thread
            wait_for(lambda: batcher._queues)
            release.set()
            assert first.result()["y"].tolist() == second.result()["y"].tolist() == [[2.0] * 3]
        assert threads[0].startswith("caller") and threads[1] == "batch_threads-0"
    finally:
        batcher.stop()


def test_a_full_queue_is_unavailable_and_different_shapes_are_never_merged():
    batcher = Batcher(BatchingParameters(max_batch_size=4, max_enqueued_batches=1, num_batch_threads=1,
                                         batch_timeout_micros=200_000)).start()
    version = FakeVersion(delay=0.3)
    try:
        with futures.ThreadPoolExecutor(6) as pool:
            def call(rows, width=3):
                return batcher.run("m", version, "s", {"x": np.ones((rows, width), "f4")}, 10.0)

            first = [pool.submit(call, 2), pool.submit(call, 2)]  # one full batch: runs at once
            assert version.started.wait(5)
            queued = [pool.submit(call, 3), pool.submit(call, 1, 5)]  # batches of two per-example shapes
            time.sleep(0.05)
            with pytest.raises(ServingError, match="batching queue is full") as caught:
                call(2)  # 3 + 2 > 4 and the queue holds its 1 batch
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(ServingError, match="larger than the batching max_batch_size 4"):
                call(5)
            for future in first + queued:
                rows, width = future.result()["y"].shape
                assert future.result()["y"].tolist() == [[2.0] * width] * rows
        assert sorted(version.sizes) == [1, 3, 4]
    finally:
        batcher.stop()


def test_the_batcher_admits_its_capacity_of_calls_then_is_unavailable():
    batcher = Batcher(BatchingParameters(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    assert batcher.capacity == 4  # (1 queued + 1 running batch) x 2 calls of at least one example
    with contextlib.ExitStack() as held:
        for _ in range(4):
            held.enter_context(batcher.admission())
        with pytest.raises(ServingError, match=r"batching queue is full \(4 calls waiting or running\)") as caught:
            held.enter_context(batcher.admission())
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and batcher.admitted == 4
    assert batcher.admitted == 0
    with batcher.admission():
        assert batcher.admitted == 1


def test_parameters_asking_for_too_many_threads_are_one_line(base_path, tmp_path, capsys):
    parameters = tmp_path / "b.config"
    parameters.write_text("max_batch_size { value: 1000 } num_batch_threads { value: 2 }")  # TF Serving's 1000 x 10
    assert server_main(["--model_name", "tiny", "--model_base_path", str(base_path), "--port", "0",
                        "--enable_batching", "--batching_parameters_file", str(parameters)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: batching parameters ask for 12000 Predict threads")
    assert "(max_enqueued_batches 10 + num_batch_threads 2) x max_batch_size 1000); at most 4096" in err


@pytest.fixture(scope="module")
def batched_server(base_path, tmp_path_factory):
    """A server merging up to 8 calls (padded to 4 or 8) after waiting up to 50 ms, on its own copy of version 1."""
    base = tmp_path_factory.mktemp("batched") / "tiny"
    shutil.copytree(base_path / "1", base / "1")
    parameters = BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1,
                                    allowed_batch_sizes=(4, 8))
    with ModelServer({"tiny": str(base)}, port=0, max_concurrent=16, poll_seconds=0.1,
                     batching=parameters) as running:
        yield running


@contextlib.contextmanager
def recorded_batch_sizes(served):
    """Yields a list that gets the batch size of each run of `served` (a loaded version) inside the block."""
    sizes = []
    original_run = served.run

    def recording_run(name, inputs):
        sizes.append(len(inputs["images"]))
        return original_run(name, inputs)

    served.run = recording_run
    try:
        yield sizes
    finally:
        del served.run


def test_batched_answers_equal_unbatched_ones_per_call(batched_server, runs):
    served = batched_server.models.by_name["tiny"].get()
    calls = [uint8_images(1 + index % 3, seed=index) for index in range(12)]

    def predict(images):
        prediction, _ = stubs(batched_server.port)
        response = prediction.Predict(predict_request(images), timeout=60)
        return tf.make_ndarray(response.outputs["embedding"])

    with recorded_batch_sizes(served) as sizes, futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(predict, calls))
    for images, answer in zip(calls, answers):
        np.testing.assert_allclose(answer, served.run("serving_default", {"images": images})["embedding"],
                                   atol=1e-6)  # the same model alone on this call: float32 round-off
        np.testing.assert_allclose(answer, keras_embeddings(runs["v1"], images), atol=1e-5)
    assert set(sizes) <= {4, 8} and len(sizes) < len(calls)  # merged, padded to the allowed sizes


def wait_until_served(port: int, version: int, seconds: float = 120) -> None:
    """Polls GetModelStatus until `version` is AVAILABLE (fails after `seconds`)."""
    _, model_service = stubs(port)
    deadline = time.time() + seconds
    while status_of(model_service).get(version, (None,))[0] != State.AVAILABLE:
        assert time.time() < deadline, f"version {version} not served within {seconds} s"
        time.sleep(0.1)


def test_a_version_swap_under_batched_load_fails_no_call(batched_server, runs):
    base = batched_server.models.by_name["tiny"].base_path
    images = uint8_images(2, seed=9)
    expected = {1: keras_embeddings(runs["v1"], images), 2: keras_embeddings(runs["v2"], images)}
    stop = threading.Event()

    def client(_):
        prediction, _ = stubs(batched_server.port)
        versions = []
        while not stop.is_set():
            response = prediction.Predict(predict_request(images), timeout=60)  # any failure fails the test
            version = response.model_spec.version.value
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["embedding"]), expected[version], atol=1e-5)
            versions.append(version)
        return versions

    with futures.ThreadPoolExecutor(6) as pool:
        clients = [pool.submit(client, index) for index in range(6)]
        time.sleep(0.5)
        export_run(runs["v2"], base / "2")
        wait_until_served(batched_server.port, 2)
        time.sleep(0.5)
        stop.set()
        versions = [version for future in clients for version in future.result()]
    assert versions[0] == 1 and versions[-1] == 2 and set(versions) == {1, 2}


def test_calls_wait_in_the_batch_queue_not_in_predict_slots(base_path, runs, tmp_path):
    """24 one-face calls with --max_concurrent 2 form one batch of 24 (the batch runs when full); while 23 wait in
    it, metadata and status answer at once."""
    base = tmp_path / "tiny"
    shutil.copytree(base_path / "1", base / "1")
    parameters = BatchingParameters(max_batch_size=24, batch_timeout_micros=60_000_000, num_batch_threads=1)
    with ModelServer({"tiny": str(base)}, port=0, max_concurrent=2, max_queue=0, batching=parameters) as running:
        calls = [uint8_images(1, seed=index) for index in range(24)]
        prediction, model_service = stubs(running.port)

        def predict(images):
            response = prediction.Predict(predict_request(images), timeout=60)
            return tf.make_ndarray(response.outputs["embedding"])

        served = running.models.by_name["tiny"].get()
        with recorded_batch_sizes(served) as sizes, futures.ThreadPoolExecutor(24) as pool:
            waiting = [pool.submit(predict, images) for images in calls[:23]]
            wait_for(lambda: running.batcher.admitted == 23)
            metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            metadata.model_spec.name = "tiny"
            assert prediction.GetModelMetadata(metadata, timeout=10).model_spec.version.value == 1
            assert status_of(model_service)[1][0] == State.AVAILABLE
            assert sizes == []  # still waiting for the 24th call
            last = pool.submit(predict, calls[23])
            answers = [future.result() for future in waiting] + [last.result()]
    assert sizes == [24]
    expected = keras_embeddings(runs["v1"], np.concatenate(calls))
    np.testing.assert_allclose(np.concatenate(answers), expected, atol=1e-5)
