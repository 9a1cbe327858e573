"""A gRPC model server speaking TF Serving's API for the SavedModels of tools.export, where the official
tensorflow_model_server cannot be installed (README, "Serving").

    python -m serving.server --model_name tiny --model_base_path models/tiny --port 8500
    python -m serving.server --model_config_file serving/models.config --port 8500

Services: tensorflow.serving.PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus). Each
model serves the newest version under its base path and picks up a newer one within --file_system_poll_wait_seconds
(serving/versions.py). A bad request gets its gRPC status and the server keeps serving: NOT_FOUND for an unknown
model, version, label or signature; INVALID_ARGUMENT for wrong input keys, dtype, shape or payload, an empty batch or
one over --max_batch_size, all checked from the request's tensor header before any array is built
(serving/requests.py); UNAVAILABLE while a model has no version loaded.

Load: at most --max_concurrent Predict calls run at once; up to --max_queue more wait, in arrival order, for a free
slot until their gRPC deadline or --queue_timeout_seconds, whichever comes first (then DEADLINE_EXCEEDED). Only a
Predict finding the queue full is refused (RESOURCE_EXHAUSTED). GetModelMetadata and GetModelStatus never wait for
Predict: the server has threads for every admitted Predict plus CONTROL_THREADS, and no gRPC-level call limit.
Errors the server did not foresee are logged with their traceback; the client gets INTERNAL with a reference to the
log line, never a path or exception text.

With --enable_batching (and TF Serving's --batching_parameters_file) a Predict to a batchable signature is admitted
by the batcher instead of the Predict slots: it takes one of the batcher's places (UNAVAILABLE when all are held),
is checked, and joins a batch of concurrent calls to the same version and signature (serving/batching.py), so a batch
can hold up to max_batch_size calls. The server has a thread for each of the batcher's places, at most
MAX_BATCHING_THREADS. Other signatures keep the Predict slots. With --prefer_tflite_model a version folder holding
model.tflite is served from it by pools of LiteRT interpreters (serving/tflite_pool.py), else from its SavedModel.

Binds to 127.0.0.1 unless --host says otherwise; --port 0 picks a free port (printed). SIGTERM or SIGINT stops it
cleanly: no new calls, in-flight calls get --grace_seconds to finish.
"""
import argparse
import collections
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import uuid
from concurrent import futures
from pathlib import Path
from typing import Dict, List, Optional

from tfface import cli  # noqa: E402

cli.prefer_onednn()  # before TensorFlow's first import
cli.quiet_tensorflow()

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from serving.batching import Batcher, BatchingParameters, batchable, read_batching_parameters  # noqa: E402
from serving.errors import ServingError, echoed  # noqa: E402
from serving.requests import checked_inputs, checked_output_filter, requested_version  # noqa: E402
from serving.tflite_pool import version_loader  # noqa: E402
from serving.versions import LoadedVersion, ModelVersions  # noqa: E402

LOG = logging.getLogger("serving")
DEFAULT_SIGNATURE = "serving_default"
MEGABYTE = 1 << 20
# Calls other than Predict (metadata, status) get these threads beyond the Predict slots and queue, so they answer
# while Predict is full.
CONTROL_THREADS = 4
# The most threads batching parameters may ask for (one per call the batcher can hold); more is refused with a line.
MAX_BATCHING_THREADS = 4096
MAX_PORT = 65535
MAX_MESSAGE_MB = 2047  # gRPC's message size limits are C ints: under 2^31 bytes


def _log_reference(message: str, *args) -> str:
    """Logs `message` with the current exception's traceback under a short random reference, returned."""
    reference = uuid.uuid4().hex[:8]
    LOG.exception("[%s] " + message, reference, *args)
    return reference


def _answers_errors(handler):
    """Turns a ServingError raised by a servicer method into the call's gRPC status and message; any other
    exception is logged and answered INTERNAL with the log reference only."""

    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except ServingError as error:
            context.abort(error.code, str(error))
        except Exception:  # noqa: BLE001 - whatever it is, the client gets no path or exception text
            reference = _log_reference("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error [{reference}]; the server log has the details")

    return wrapper


@contextlib.contextmanager
def _model_input_errors(model_name: str):
    """Answers the model rejecting checked inputs (tf InvalidArgumentError) INVALID_ARGUMENT with a log reference."""
    try:
        yield
    except tf.errors.InvalidArgumentError:
        reference = _log_reference("model '%s' rejected the inputs", model_name)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the model rejected the inputs [{reference}]; the server log has the details",
        ) from None


class PredictQueue:
    """Admission of Predict calls: `max_concurrent` run at once, up to `max_queue` more wait in arrival order.

    A waiting call gets the first slot freed; it gives up after `timeout` seconds or its own remaining deadline,
    whichever is shorter (DEADLINE_EXCEEDED). A call finding `max_queue` calls waiting is RESOURCE_EXHAUSTED.
    """

    def __init__(self, max_concurrent: int, max_queue: int, timeout: float):
        self.max_concurrent, self.max_queue, self.timeout = max_concurrent, max_queue, timeout
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: collections.deque = collections.deque()  # one Event per waiting call, oldest first

    @contextlib.contextmanager
    def slot(self, time_remaining: Optional[float] = None):
        """Holds a slot for the `with` block; `time_remaining` is the call's deadline in seconds (None: none)."""
        self._acquire(time_remaining)
        try:
            yield
        finally:
            self._release()

    def _acquire(self, time_remaining: Optional[float]) -> None:
        with self._lock:
            if self._running < self.max_concurrent and not self._waiting:
                self._running += 1
                return
            if len(self._waiting) >= self.max_queue:
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is busy: {self.max_concurrent} Predict calls running and {self.max_queue} queued",
                )
            turn = threading.Event()
            self._waiting.append(turn)
        wait = self.timeout if time_remaining is None else max(0.0, min(self.timeout, time_remaining))
        if turn.wait(wait):
            return
        with self._lock:
            if turn.is_set():  # a slot was handed over as the wait ended
                return
            self._waiting.remove(turn)
        raise ServingError(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"no Predict slot freed within {wait:.1f} s of waiting in the queue"
        )

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # the slot passes to the oldest waiting call
            else:
                self._running -= 1


class Models:
    """The served models by name; an unknown name is NOT_FOUND."""

    def __init__(self, models: Dict[str, ModelVersions]):
        self.by_name = models

    def find(self, model_spec) -> ModelVersions:
        if model_spec.name not in self.by_name:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model '{echoed(model_spec.name)}'; serving: {', '.join(sorted(self.by_name))}",
            )
        return self.by_name[model_spec.name]

    def version_for(self, model_spec) -> LoadedVersion:
        return self.find(model_spec).get(requested_version(model_spec))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata (signature_def only, as tensorflow_model_server)."""

    def __init__(self, models: Models, queue: PredictQueue, max_batch_size: int, max_tensor_bytes: int,
                 batcher: Optional[Batcher] = None):
        self.models = models
        self.queue = queue
        self.max_batch_size = max_batch_size
        self.max_tensor_bytes = max_tensor_bytes
        self.batcher = batcher

    @_answers_errors
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        loaded = self.models.version_for(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = loaded.signature(signature_name)
        output_keys = checked_output_filter(signature, request.output_filter)
        if self.batcher is not None and batchable(signature):
            with self.batcher.admission():
                inputs = checked_inputs(signature, request.inputs, self.max_batch_size, self.max_tensor_bytes)
                with _model_input_errors(request.model_spec.name):
                    outputs = self.batcher.run(request.model_spec.name, loaded, signature_name, inputs,
                                               context.time_remaining())
        else:
            with self.queue.slot(context.time_remaining()):
                inputs = checked_inputs(signature, request.inputs, self.max_batch_size, self.max_tensor_bytes)
                with _model_input_errors(request.model_spec.name):
                    outputs = loaded.run(signature_name, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for key in output_keys:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        return response

    @_answers_errors
    def GetModelMetadata(self, request, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "metadata_field is empty; ask for 'signature_def'")
        unsupported = sorted(set(request.metadata_field) - {"signature_def"})
        if unsupported:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"metadata field(s) {echoed(unsupported)} not supported; only 'signature_def'",
            )
        loaded = self.models.version_for(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in loaded.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus: the state of every version of a model seen so far (or of the one asked for)."""

    def __init__(self, models: Models):
        self.models = models

    @_answers_errors
    def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:
        model = self.models.find(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, status in model.statuses(requested_version(request.model_spec)):
            entry = response.model_version_status.add(version=version, state=status.state)
            entry.status.error_code = status.error_code
            entry.status.error_message = status.error_message
        return response


class ModelServer:
    """The gRPC server for `models` ({name: base path}) on host:port (port 0: a free one, see `.port`).

    `start()` loads each model's newest version before it accepts calls; a background thread polls the base paths
    every `poll_seconds`; `stop()` ends both.
    """

    def __init__(
        self, models: Dict[str, str], host: str = "127.0.0.1", port: int = 8500, max_concurrent: int = 16,
        max_queue: int = 128, queue_timeout: float = 30.0, max_batch_size: int = 256, max_message_mb: int = 256,
        poll_seconds: float = 1.0, batching: Optional[BatchingParameters] = None, prefer_tflite_model: bool = False,
        num_tflite_pools: int = os.cpu_count() or 1, num_tflite_interpreters_per_pool: int = 1,
    ):
        if not models:
            raise ValueError("no model to serve")
        if not 0 <= int(port) <= MAX_PORT:
            raise ValueError(f"port must be in [0, {MAX_PORT}] (0: any free port), got {port}")
        for name, value, most in (("max_concurrent", max_concurrent, None), ("max_batch_size", max_batch_size, None),
                                  ("max_message_mb", max_message_mb, MAX_MESSAGE_MB),
                                  ("num_tflite_pools", num_tflite_pools, None),
                                  ("num_tflite_interpreters_per_pool", num_tflite_interpreters_per_pool, None)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
            if most is not None and int(value) > most:
                raise ValueError(f"{name} must be at most {most} (gRPC's messages are under 2 GiB), got {value}")
        if int(max_queue) < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        for name, value in (("queue_timeout", queue_timeout), ("poll_seconds", poll_seconds)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        load = version_loader(prefer_tflite_model, int(num_tflite_pools), int(num_tflite_interpreters_per_pool))
        self.models = Models({name: ModelVersions(name, path, load) for name, path in models.items()})
        self.queue = PredictQueue(max_concurrent, max_queue, queue_timeout)
        self.poll_seconds = poll_seconds
        self.batcher = None if batching is None else Batcher(batching)
        batching_threads = 0 if self.batcher is None else self.batcher.capacity
        if batching_threads > MAX_BATCHING_THREADS:
            raise ValueError(
                f"batching parameters ask for {batching_threads} Predict threads, one per call the batcher can hold "
                f"((max_enqueued_batches {batching.max_enqueued_batches} + num_batch_threads "
                f"{batching.num_batch_threads}) x max_batch_size {batching.max_batch_size}); at most "
                f"{MAX_BATCHING_THREADS}: lower max_batch_size or max_enqueued_batches in --batching_parameters_file"
            )
        message_bytes = int(max_message_mb) * MEGABYTE
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=max_concurrent + max_queue + batching_threads + CONTROL_THREADS,
                thread_name_prefix="serving",
            ),
            options=[
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.max_send_message_length", message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.models, self.queue, max_batch_size, message_bytes, self.batcher), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.models), self._server)
        try:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as error:
            raise OSError(f"cannot listen on {host}:{port}: {error}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port} (in use?)")
        self.host = host
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="serving-poller", daemon=True)

    def poll(self) -> None:
        """Checks every model's base path for a newer (or vanished) version once."""
        for model in self.models.by_name.values():
            try:
                model.poll()
            except OSError as error:
                LOG.error("model '%s': cannot read %s: %s", model.name, model.base_path, error)

    def _poll_forever(self) -> None:
        while not self._stop_polling.wait(self.poll_seconds):
            self.poll()

    def start(self) -> "ModelServer":
        self.poll()
        if self.batcher is not None:
            self.batcher.start()
        for model in self.models.by_name.values():
            if not model.statuses():
                LOG.warning("model '%s': no version under %s yet; waiting for one", model.name, model.base_path)
        self._server.start()
        self._poller.start()
        return self

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Refuses new calls, lets in-flight ones finish for up to `grace_seconds`, stops polling."""
        self._server.stop(grace_seconds).wait()
        if self.batcher is not None:
            self.batcher.stop()
        self._stop_polling.set()
        if self._poller.is_alive():
            self._poller.join()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def read_model_config(path: str) -> Dict[str, str]:
    """{name: base_path} from a tensorflow_model_server --model_config_file (text ModelServerConfig); only name,
    base_path and model_platform "tensorflow" are supported, other settings are refused by name."""
    try:
        config = text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a ModelServerConfig: {error}") from None
    models = {}
    for entry in config.model_config_list.config:
        supported = ("name", "base_path", "model_platform")
        unsupported = [field.name for field, _ in entry.ListFields() if field.name not in supported]
        if unsupported:
            raise ValueError(f"{path}: model '{entry.name}': unsupported setting(s) {', '.join(unsupported)}")
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model '{entry.name}': model_platform must be 'tensorflow'")
        if not entry.name or not entry.base_path:
            raise ValueError(f"{path}: every model needs a name and a base_path")
        if entry.name in models:  # tensorflow_model_server refuses it too
            raise ValueError(f"{path}: model '{entry.name}' is configured more than once")
        models[entry.name] = entry.base_path
    if not models:
        raise ValueError(f"{path}: no model in model_config_list")
    return models


def _flag_value(text: str) -> bool:
    """A boolean flag's value as tensorflow_model_server takes it: --flag, --flag=true or --flag=false."""
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", help="the model's name in requests (with --model_base_path)")
    parser.add_argument("--model_base_path", help="folder of numeric version folders, e.g. models/NAME")
    parser.add_argument("--model_config_file", help="text ModelServerConfig listing models (instead of the two above)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--rest_api_port", type=int, default=0, help="accepted for compatibility; no REST API here")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--max_concurrent", type=int, default=16, help="Predict calls run at once")
    parser.add_argument("--max_queue", type=int, default=128, help="Predict calls waiting for a slot before refusing")
    parser.add_argument(
        "--queue_timeout_seconds", type=float, default=30.0, help="longest wait in the queue (or the call's deadline)"
    )
    parser.add_argument("--max_batch_size", type=int, default=256, help="largest batch accepted")
    parser.add_argument("--max_message_mb", type=int, default=256, help="largest gRPC message, in MiB")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0, help="version polling period")
    parser.add_argument("--grace_seconds", type=float, default=5.0, help="time in-flight calls get at shutdown")
    cli.add_verbose_argument(parser)
    parser.add_argument("--enable_batching", type=_flag_value, nargs="?", const=True, default=False,
                        help="merge concurrent Predict calls into one model run (serving/batching.py)")
    parser.add_argument("--batching_parameters_file",
                        help="TF Serving's text BatchingParameters (with --enable_batching; default: its defaults)")
    parser.add_argument("--prefer_tflite_model", type=_flag_value, nargs="?", const=True, default=False,
                        help="serve a version folder's model.tflite when it has one (serving/tflite_pool.py)")
    parser.add_argument("--num_tflite_pools", type=int, default=os.cpu_count() or 1,
                        help="TFLite interpreter pools per version (default: CPU cores)")
    parser.add_argument("--num_tflite_interpreters_per_pool", type=int, default=1,
                        help="interpreters per pool; a call's batch is split across them")
    args = parser.parse_args(argv)
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file needs --enable_batching")
    if args.model_config_file and (args.model_name or args.model_base_path):
        parser.error("give either --model_config_file or --model_name with --model_base_path")
    if not args.model_config_file and not (args.model_name and args.model_base_path):
        parser.error("--model_name and --model_base_path are required (or --model_config_file)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s serving: %(message)s")
    tf.get_logger().setLevel("ERROR")
    if args.rest_api_port:
        LOG.warning("--rest_api_port %d ignored: this server has no REST API", args.rest_api_port)
    try:
        models = read_model_config(args.model_config_file) if args.model_config_file else {
            args.model_name: args.model_base_path
        }
        batching = None
        if args.enable_batching:
            batching = (read_batching_parameters(args.batching_parameters_file) if args.batching_parameters_file
                        else BatchingParameters())
            LOG.info("batching: %s", batching)
        server = ModelServer(
            models, host=args.host, port=args.port, max_concurrent=args.max_concurrent, max_queue=args.max_queue,
            queue_timeout=args.queue_timeout_seconds, max_batch_size=args.max_batch_size,
            max_message_mb=args.max_message_mb, poll_seconds=args.file_system_poll_wait_seconds, batching=batching,
            prefer_tflite_model=args.prefer_tflite_model, num_tflite_pools=args.num_tflite_pools,
            num_tflite_interpreters_per_pool=args.num_tflite_interpreters_per_pool,
        ).start()
    except (ValueError, OSError) as error:
        return cli.user_error(error)
    stop_requested = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stop_requested.set())
    print(f"serving {', '.join(sorted(models))} on {args.host}:{server.port}", flush=True)
    while not stop_requested.wait(0.2):
        pass
    LOG.info("stopping: no new calls, %.0f s for the ones in flight", args.grace_seconds)
    server.stop(args.grace_seconds)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
