"""The batcher's own cost per call (serving/batching.py), in process: N threads each submit one 112x112x3 uint8 face
per call to a trivial model, through `Batcher.run` (batching on) or calling the model directly (batching off).

    python -m benchmarks.bench_batching_overhead [--threads 1,8,64] [--seconds 2] [--batch_timeout_micros 0]

The trivial model returns the first 512 pixels of each face as float32 (a [batch, 512] "embedding"), so nearly all of
a batched call's time is the batcher's: queueing, merging (one copy of the inputs), waking the batch thread and the
caller, splitting (through `admission()` and `run`, as serving.server's Predict). For each thread count and mode it prints calls/s, p50 and p99 latency (ms) and, for batching on,
the batch sizes formed (mean, max) and the overhead per call: batched minus direct p50 latency, and batched minus
direct wall time per call (1000 / calls/s, ms). max_batch_size 64, num_batch_threads 2, max_enqueued_batches 8.
"""
import argparse
import threading
import time
from typing import Dict, List

import numpy as np

from serving.batching import Batcher, BatchingParameters

FACE = (112, 112, 3)
EMBEDDING = 512


class TrivialVersion:
    """A model version whose run costs next to nothing; records each run's batch size."""

    def __init__(self):
        self.sizes: List[int] = []

    def run(self, name: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        images = inputs["images"]
        self.sizes.append(len(images))
        return {"embedding": images.reshape(len(images), -1)[:, :EMBEDDING].astype(np.float32)}


def load(call, threads: int, seconds: float) -> (float, np.ndarray):
    """Calls/s and every call's latency (s) of `threads` threads each calling `call(face)` for `seconds`."""
    latencies: List[List[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        face = np.full((1, *FACE), index % 256, np.uint8)
        start.wait()
        while not stop.is_set():
            began = time.perf_counter()
            call(face)
            latencies[index].append(time.perf_counter() - began)

    workers = [threading.Thread(target=client, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    every = np.concatenate([np.asarray(part) for part in latencies])
    return len(every) / elapsed, every


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,8,64", help="comma-separated thread counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per thread count and mode")
    parser.add_argument("--batch_timeout_micros", type=int, default=0)
    args = parser.parse_args(argv)
    parameters = BatchingParameters(max_batch_size=64, batch_timeout_micros=args.batch_timeout_micros,
                                    max_enqueued_batches=8, num_batch_threads=2)
    print(f"| threads | mode | calls/s | p50 ms | p99 ms | batch size mean / max | overhead per call: p50 ms, "
          f"wall ms |")
    print("|---|---|---|---|---|---|---|")
    for threads in [int(text) for text in args.threads.split(",")]:
        version = TrivialVersion()
        rate, latencies = load(lambda face: version.run("serving_default", {"images": face}), threads, args.seconds)
        direct_p50 = np.percentile(latencies, 50) * 1e3
        print(f"| {threads} | direct | {rate:.0f} | {direct_p50:.3f} | {np.percentile(latencies, 99) * 1e3:.3f} "
              f"| 1 / 1 | |")
        version = TrivialVersion()
        batcher = Batcher(parameters).start()

        def batched(face: np.ndarray) -> Dict[str, np.ndarray]:  # as serving.server's Predict does it
            with batcher.admission():
                return batcher.run("m", version, "serving_default", {"images": face}, 60.0)

        try:
            batched_rate, latencies = load(batched, threads, args.seconds)
        finally:
            batcher.stop()
        p50 = np.percentile(latencies, 50) * 1e3
        print(f"| {threads} | batched | {batched_rate:.0f} | {p50:.3f} | {np.percentile(latencies, 99) * 1e3:.3f} "
              f"| {np.mean(version.sizes):.1f} / {max(version.sizes)} | {p50 - direct_p50:+.3f}, "
              f"{1e3 / batched_rate - 1e3 / rate:+.3f} |")


if __name__ == "__main__":
    main()
