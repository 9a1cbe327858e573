"""tools.export --with_tflite and serving.server --prefer_tflite_model (serving/tflite_pool.py): the parity-checked
model.tflite in the version folder, TFLite answers equal to the SavedModel's on every signature (with batching on
too), the same metadata, no interpreter run from two threads at once, fallback to the SavedModel without the file and
a hot swap onto a TFLite version."""
import contextlib
import io
import json
import shutil
import threading
import time
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.batching import BatchingParameters
from serving.server import ModelServer
from serving.tflite_pool import TFLiteVersion
from tfface.deploy import export_run_with_tflite
from tfface.embedders import METADATA_FILE, TFLITE_IN_SAVED_MODEL
from tools.export import main as export_main
from test_serving import keras_embeddings, predict_request, runs, stubs, uint8_images  # noqa: F401 - runs: fixture
from test_serving_batching import wait_until_served

SIGNATURES = ("serving_default", "embed_normalized", "embed_flip")


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """Version 1 exported by `tools.export --with_tflite`: (model base path, the command's output)."""
    base = tmp_path_factory.mktemp("tflite") / "tiny"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = export_main(["--work_dir", str(runs["v1"]), "--out", str(base / "1"), "--with_tflite"])
    assert code == 0
    return base, output.getvalue()


@pytest.fixture(scope="module")
def tflite_base(exported):
    return exported[0]


def test_export_with_tflite_writes_a_parity_checked_copy_in_the_version_folder(runs, exported, tmp_path, capsys):
    base, line = exported
    out = base / "1"
    assert f"to {out} with model.tflite (" in line and "parity on 32 SynthFaces renders: max |diff|" in line
    entry = json.loads((out / METADATA_FILE).read_text())["tflite"]
    assert entry["file"] == TFLITE_IN_SAVED_MODEL
    assert entry["size_bytes"] == (out / TFLITE_IN_SAVED_MODEL).stat().st_size
    assert entry["parity"]["max_abs_diff"] <= 1e-4
    assert export_main(["--work_dir", str(runs["v1"]), "--out", str(tmp_path / "t.tflite"), "--format", "tflite",
                        "--with_tflite"]) == 2
    assert "--with_tflite is for --format savedmodel" in capsys.readouterr().err


def _predict(port, images, signature):
    prediction, _ = stubs(port)
    response = prediction.Predict(predict_request(images, signature=signature), timeout=60)
    return tf.make_ndarray(response.outputs["embedding"])


def _metadata(port):
    prediction, _ = stubs(port)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    prediction.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(signatures)
    return signatures


def test_tflite_answers_equal_the_savedmodel_and_no_interpreter_runs_on_two_threads(tflite_base):
    batching = BatchingParameters(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=2)
    with ModelServer({"tiny": str(tflite_base)}, port=0) as savedmodel, \
            ModelServer({"tiny": str(tflite_base)}, port=0, max_concurrent=16, batching=batching,
                        prefer_tflite_model=True, num_tflite_pools=2, num_tflite_interpreters_per_pool=2) as lite:
        served = lite.models.by_name["tiny"].get()
        assert isinstance(served, TFLiteVersion) and savedmodel.models.by_name["tiny"].get().format == "savedmodel"
        assert _metadata(lite.port) == _metadata(savedmodel.port)
        overlaps, used, guard = [], set(), threading.Lock()
        for pool in list(served._free.queue):
            for runners in pool:
                for name, runner in list(runners.items()):
                    busy = threading.Lock()

                    def checked(runner=runner, busy=busy, **inputs):
                        if not busy.acquire(blocking=False):
                            overlaps.append(runner)
                            return runner(**inputs)
                        try:
                            with guard:
                                used.add(id(busy))
                            time.sleep(0.01)
                            return runner(**inputs)
                        finally:
                            busy.release()

                    runners[name] = checked
        images = [uint8_images(1 + index % 4, seed=index) for index in range(16)]
        for signature in SIGNATURES:
            calls = [(batch.astype(np.float32) - 127.5) / 128.0 if signature == "embed_normalized" else batch
                     for batch in images]
            with futures.ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda batch: _predict(lite.port, batch, signature), calls))
            for batch, answer in zip(calls, answers):
                np.testing.assert_allclose(answer, _predict(savedmodel.port, batch, signature), atol=1e-5)
        assert overlaps == [] and len(used) > 1


def test_without_the_file_the_savedmodel_is_served_then_a_tflite_version_swaps_in(runs, tflite_base, tmp_path):
    base = tmp_path / "tiny"
    shutil.copytree(tflite_base / "1", base / "1", ignore=shutil.ignore_patterns(TFLITE_IN_SAVED_MODEL))
    images = uint8_images(3, seed=4)
    with ModelServer({"tiny": str(base)}, port=0, poll_seconds=0.1, prefer_tflite_model=True,
                     num_tflite_pools=1) as running:
        assert running.models.by_name["tiny"].get().format == "savedmodel"
        np.testing.assert_allclose(_predict(running.port, images, ""), keras_embeddings(runs["v1"], images), atol=1e-5)
        export_run_with_tflite(runs["v2"], base / "2")
        wait_until_served(running.port, 2)
        assert running.models.by_name["tiny"].get().format == "tflite"
        np.testing.assert_allclose(_predict(running.port, images, ""), keras_embeddings(runs["v2"], images), atol=1e-5)
