"""Server-side request batching as tensorflow_model_server's --enable_batching does it: concurrent Predict calls to
the same model version and signature, with the same per-example shapes and dtypes, are merged into one model run and
the outputs split back per call.

    parameters = read_batching_parameters("batching.config")   # TF Serving's text BatchingParameters
    batcher = Batcher(parameters).start()
    with batcher.admission():                      # UNAVAILABLE when the batcher holds `capacity` calls
        inputs = ...                               # the call's checked inputs, built once admitted
        outputs = batcher.run("arcface", loaded_version, "serving_default", inputs, time_remaining=5.0)
    batcher.stop()

The parameters file is TF Serving's (session_bundle_config.proto's BatchingParameters, text format), e.g.

    max_batch_size { value: 64 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 8 }
    num_batch_threads { value: 2 }
    allowed_batch_sizes: 16
    allowed_batch_sizes: 64

with TF Serving's defaults for what it leaves out (SharedBatchScheduler's QueueOptions and Options): max_batch_size
1000, batch_timeout_micros 0, max_enqueued_batches 10, num_batch_threads the number of CPU cores, thread_pool_name
"batch_threads". allowed_batch_sizes must increase and end with max_batch_size; a merged batch is padded up to the
next allowed size with copies of its first example (as TF Serving pads), and the padding's outputs are dropped.
pad_variable_length_inputs is refused: calls of different per-example shapes are never merged here.

Admission: the batcher holds at most `capacity` = (max_enqueued_batches + num_batch_threads) x max_batch_size calls
at once, queued or running (each call has at least one example, so that is what the batch queues and the batches
being run can hold); a call past it is UNAVAILABLE before its arrays are built. A server gives each of them a thread.

Scheduling, per queue (one per model version, signature and per-example shapes/dtypes): a call joins the newest open
batch if it fits within max_batch_size, else opens a new one; a queue holding max_enqueued_batches batches refuses
the call with UNAVAILABLE (TF Serving's "queue is full"); a call larger than max_batch_size is INVALID_ARGUMENT. At
most num_batch_threads batches run at once. A batch runs once it is full, a newer batch exists behind it, or its
first call has waited batch_timeout_micros: on the thread of the call that made it ready on arrival (it filled it, or
batch_timeout_micros is 0) while fewer than num_batch_threads batches run, which saves that call two thread
hand-offs; else on one of the num_batch_threads batch threads. A call whose deadline passes while its batch is still
queued leaves it and gets DEADLINE_EXCEEDED; the rest of the batch runs without it. A queue holds its version object,
so calls that started on a version finish on it while a newer one is swapped in.
"""
import contextlib
import logging
import os
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import ServingError

LOG = logging.getLogger("serving")
Arrays = Dict[str, np.ndarray]


class BatchingParameters(NamedTuple):
    """The batching settings, TF Serving's defaults (module docstring); batch_timeout_micros in microseconds."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: Tuple[int, ...] = ()


def _batching_parameters_class():
    """TF Serving's BatchingParameters message (fields 1-7 of session_bundle_config.proto), built at run time: the
    tensorflow-serving-api package does not ship that proto, and text_format needs the message to parse its syntax."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="tfface_serving/batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, wrapper in ((1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                  (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
                                  (5, "thread_pool_name", "StringValue")):
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_batching_parameters(text: str, label: str = "batching parameters") -> BatchingParameters:
    """BatchingParameters from TF Serving's text format; a malformed or unknown field, or a value out of range, is
    a ValueError of one line naming `label` and the field."""
    try:
        message = text_format.Parse(text, _batching_parameters_class()())
    except text_format.ParseError as error:
        raise ValueError(f"{label}: {str(error).splitlines()[0]}") from None
    if message.pad_variable_length_inputs:
        raise ValueError(f"{label}: pad_variable_length_inputs is not supported: calls of different shapes are "
                         f"never merged here")
    defaults = BatchingParameters()
    values = {name: getattr(message, name).value if message.HasField(name) else getattr(defaults, name)
              for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                           "thread_pool_name")}
    for name, minimum in (("max_batch_size", 1), ("batch_timeout_micros", 0), ("max_enqueued_batches", 1),
                          ("num_batch_threads", 1)):
        if values[name] < minimum:
            raise ValueError(f"{label}: {name} must be >= {minimum}, got {values[name]}")
    allowed = tuple(message.allowed_batch_sizes)
    if allowed:
        if any(size < 1 for size in allowed) or any(a >= b for a, b in zip(allowed, allowed[1:])):
            raise ValueError(f"{label}: allowed_batch_sizes must be positive and increasing, got {list(allowed)}")
        if allowed[-1] != values["max_batch_size"]:
            raise ValueError(f"{label}: allowed_batch_sizes must end with max_batch_size {values['max_batch_size']},"
                             f" got {list(allowed)}")
    return BatchingParameters(**values, allowed_batch_sizes=allowed)


def read_batching_parameters(path) -> BatchingParameters:
    """BatchingParameters from a --batching_parameters_file (errors name the file; see parse_batching_parameters)."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--batching_parameters_file {path}: cannot read: {error}") from None
    return parse_batching_parameters(text, label=str(path))


def batchable(signature: meta_graph_pb2.SignatureDef) -> bool:
    """Whether every input of `signature` has a known rank >= 1 and a free first (batch) dimension."""
    return bool(signature.inputs) and all(
        not info.tensor_shape.unknown_rank and len(info.tensor_shape.dim) >= 1 and info.tensor_shape.dim[0].size == -1
        for info in signature.inputs.values()
    )


class _Task:
    """One call waiting in a batch: its inputs, its number of examples and its absolute deadline (monotonic s)."""

    def __init__(self, inputs: Arrays, size: int, deadline: float):
        self.inputs, self.size, self.deadline = inputs, size, deadline
        self.batch: Optional["_Batch"] = None
        self.outputs: Optional[Arrays] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()

    def finish(self, outputs: Optional[Arrays] = None, error: Optional[BaseException] = None) -> None:
        self.outputs, self.error = outputs, error
        self.done.set()


class _Batch:
    def __init__(self, opened: float):
        self.tasks: List[_Task] = []
        self.size = 0
        self.opened = opened  # when its first call arrived (monotonic s)
        self.taken = False  # a batch thread runs it: its calls can no longer leave


class _Queue:
    """The batches of one (model, version, signature, per-example shapes) and the function that runs one."""

    def __init__(self, run: Callable[[Arrays], Arrays]):
        self.run = run
        self.batches: List[_Batch] = []  # queued, oldest first; never empty (an empty queue is deleted)


def _deadline_exceeded(waited: float) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the call's deadline passed after {waited:.3f} s waiting in the batching queue")


class Batcher:
    """Merges concurrent calls into model runs on `parameters.num_batch_threads` threads (module docstring)."""

    def __init__(self, parameters: BatchingParameters):
        self.parameters = parameters
        self._timeout = parameters.batch_timeout_micros / 1e6
        self.capacity = (parameters.max_enqueued_batches + parameters.num_batch_threads) * parameters.max_batch_size
        self._admitted = 0  # calls inside admission(), at most capacity
        self._running = 0  # batches running, on batch threads or callers' threads; at most num_batch_threads
        self._queues: Dict[tuple, _Queue] = {}
        self._condition = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"{parameters.thread_pool_name}-{index}",
                                          daemon=True) for index in range(parameters.num_batch_threads)]

    def start(self) -> "Batcher":
        """Starts the batch threads; returns self."""
        for thread in self._threads:
            thread.start()
        return self

    @contextlib.contextmanager
    def admission(self):
        """Holds one of the batcher's `capacity` places for the `with` block; UNAVAILABLE when none is free."""
        with self._condition:
            if self._admitted >= self.capacity:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"the batching queue is full ({self.capacity} calls waiting or running); "
                                   f"try again later")
            self._admitted += 1
        try:
            yield
        finally:
            with self._condition:
                self._admitted -= 1

    @property
    def admitted(self) -> int:
        """Calls holding one of the batcher's places now."""
        return self._admitted

    def run(self, model_name: str, loaded, signature_name: str, inputs: Arrays,
            time_remaining: Optional[float]) -> Arrays:
        """The outputs of `loaded.run(signature_name, inputs)` for this call alone, computed in a merged batch (the
        signature must be `batchable`); `time_remaining` in seconds (None: no deadline)."""
        size = int(next(iter(inputs.values())).shape[0])
        if size > self.parameters.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"batch of {size} is larger than the batching max_batch_size "
                               f"{self.parameters.max_batch_size}")
        shapes = tuple((key, value.dtype.str, value.shape[1:]) for key, value in sorted(inputs.items()))
        key = (model_name, loaded, signature_name, shapes)
        now = time.monotonic()
        task = _Task(inputs, size, now + time_remaining if time_remaining is not None else float("inf"))
        own = self._enqueue(key, task, lambda batch_inputs: loaded.run(signature_name, batch_inputs), now)
        if own is not None:
            self._run_batch(*own)
        if task.done.wait(None if time_remaining is None else max(0.0, time_remaining)):
            return self._result(task)
        with self._condition:
            if not task.batch.taken:
                self._leave(key, task)
                raise _deadline_exceeded(time.monotonic() - now)
        task.done.wait()  # already running: its answer comes with the rest of the batch
        return self._result(task)

    @staticmethod
    def _result(task: _Task) -> Arrays:
        if task.error is not None:
            raise task.error
        return task.outputs

    def _enqueue(self, key: tuple, task: _Task, run: Callable[[Arrays], Arrays],
                 now: float) -> Optional[Tuple[_Queue, _Batch]]:
        """Puts `task` in its queue's newest batch (or a new one); returns (queue, batch) when the caller is to run
        its batch now (module docstring), else None."""
        with self._condition:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(run)  # holds `loaded` through `run` while it has calls
            last = queue.batches[-1] if queue.batches else None
            opened = last is None or last.size + task.size > self.parameters.max_batch_size
            if opened:
                if len(queue.batches) >= self.parameters.max_enqueued_batches:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       f"the batching queue is full ({self.parameters.max_enqueued_batches} batches "
                                       f"of up to {self.parameters.max_batch_size} waiting); try again later")
                last = _Batch(now)
                queue.batches.append(last)
            last.tasks.append(task)
            last.size += task.size
            task.batch = last
            full = last.size >= self.parameters.max_batch_size
            if (self._running < self.parameters.num_batch_threads and last is queue.batches[0]
                    and (full or now >= last.opened + self._timeout)):
                return self._take(key, queue, last)
            if opened or full:
                self._condition.notify()  # a batch may run sooner; joining an open batch changes nothing
            return None

    def _leave(self, key: tuple, task: _Task) -> None:
        """Takes a queued `task` out of its batch (the condition's lock held)."""
        batch, queue = task.batch, self._queues[key]
        batch.tasks.remove(task)
        batch.size -= task.size
        if not batch.tasks:
            queue.batches.remove(batch)
            if not queue.batches:
                del self._queues[key]

    def _ready_batch(self) -> Tuple[Optional[Tuple[_Queue, _Batch]], Optional[float]]:
        """Takes the oldest batch that may run now and returns it with its queue, or None and the seconds until one
        may (None: no batch, or num_batch_threads batches running)."""
        if self._running >= self.parameters.num_batch_threads:
            return None, None
        now, wait, ready = time.monotonic(), None, None
        for key, queue in self._queues.items():
            first = queue.batches[0]
            due = first.opened + self._timeout
            if first.size >= self.parameters.max_batch_size or len(queue.batches) > 1 or due <= now:
                if ready is None or first.opened < ready[2].opened:
                    ready = (key, queue, first)
            else:
                wait = due - now if wait is None else min(wait, due - now)
        if ready is None:
            return None, wait
        return self._take(*ready), None

    def _take(self, key: tuple, queue: _Queue, batch: _Batch) -> Tuple[_Queue, _Batch]:
        """Takes `batch`, the first of `queue`, out to run (the condition's lock held); counts it as running."""
        batch.taken = True
        queue.batches.remove(batch)
        if not queue.batches:
            del self._queues[key]
        self._running += 1
        if self._queues:
            self._condition.notify()  # another thread takes over the waiting for the batches left
        return queue, batch

    def _work(self) -> None:
        while True:
            with self._condition:
                while True:
                    if self._stopped:
                        return
                    ready, wait = self._ready_batch()
                    if ready is not None:
                        break
                    self._condition.wait(wait)
            self._run_batch(*ready)

    def _run_batch(self, queue: _Queue, batch: _Batch) -> None:
        """Runs a taken batch and answers its calls; then frees its run for a waiting batch."""
        try:
            self._answer(queue, batch)
        finally:
            with self._condition:
                self._running -= 1
                if self._queues:
                    self._condition.notify()

    def _answer(self, queue: _Queue, batch: _Batch) -> None:
        now = time.monotonic()
        tasks = []
        for task in batch.tasks:
            if task.deadline <= now:
                task.finish(error=_deadline_exceeded(now - batch.opened))
            else:
                tasks.append(task)
        if not tasks:
            return
        total = sum(task.size for task in tasks)
        padded = next((size for size in self.parameters.allowed_batch_sizes if size >= total), total)
        if len(tasks) == 1 and padded == total:
            inputs = tasks[0].inputs
        else:
            inputs = {}
            for key, first in tasks[0].inputs.items():  # one copy of each call's inputs into the merged array
                merged = inputs[key] = np.empty((padded, *first.shape[1:]), first.dtype)
                start = 0
                for task in tasks:
                    merged[start : start + task.size] = task.inputs[key]
                    start += task.size
                merged[total:] = merged[:1]  # TF Serving pads with copies of the batch's first example
        try:
            outputs = queue.run(inputs)
            unbatched = sorted(key for key, value in outputs.items() if np.ndim(value) < 1 or len(value) != padded)
            if unbatched:
                raise RuntimeError(f"output(s) {unbatched} do not have the batch's {padded} rows; cannot split them")
        except BaseException as error:  # noqa: BLE001 - every call of the batch gets the failure, the thread goes on
            for task in tasks:
                task.finish(error=error)
            return
        start = 0
        for task in tasks:
            task.finish({key: value[start : start + task.size] for key, value in outputs.items()})
            start += task.size

    def stop(self) -> None:
        """Ends the batch threads after the batches they run; calls still queued get UNAVAILABLE."""
        with self._condition:
            self._stopped = True
            for queue in self._queues.values():
                for batch in queue.batches:
                    for task in batch.tasks:
                        task.finish(error=ServingError(grpc.StatusCode.UNAVAILABLE, "the server is stopping"))
            self._queues.clear()
            self._condition.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
