"""The batcher's own cost per call (serving/batching.py), in process: N threads each submit one 112x112x3 uint8 face
per call to a trivial model, through `Batcher.run` (batching on) or calling the model directly (batching off).

    python -m benchmarks.bench_batching_overhead [--threads 1,8,64] [--seconds 2] [--batch_timeout_micros 0]

The trivial model returns the first 512 pixels of each face as float32 (a [batch, 512] "embedding"), so nearly all of
a batched call's time is the batcher's (through `admission()` and `run`, as serving.server's Predict): admission,
queueing, merging (one copy of the inputs), thread hand-offs, splitting. Parameters: max_batch_size 64,
num_batch_threads 2, max_enqueued_batches 8. For each thread count and mode it prints calls/s, process CPU ms per call
(all threads, batch threads included), p50 and p99 latency (ms) and, for batching on, the batch sizes formed (mean,
max) and the overhead per call, batched minus direct: CPU ms, p50 latency ms, and wall ms per call (1000 / calls/s).
On a machine shared with other jobs the tails and the wall figures swing most between runs.
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


def load(call, threads: int, seconds: float) -> (float, float, np.ndarray):
    """Calls/s, process CPU ms per call (all threads, batch threads included) and every call's latency (s) of
    `threads` threads each calling `call(face)` for `seconds`."""
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
    began, cpu = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    every = np.concatenate([np.asarray(part) for part in latencies])
    return len(every) / elapsed, cpu * 1e3 / len(every), every


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,8,64", help="comma-separated thread counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per thread count and mode")
    parser.add_argument("--batch_timeout_micros", type=int, default=0)
    args = parser.parse_args(argv)
    parameters = BatchingParameters(max_batch_size=64, batch_timeout_micros=args.batch_timeout_micros,
                                    max_enqueued_batches=8, num_batch_threads=2)
    print("| threads | mode | calls/s | CPU ms per call | p50 ms | p99 ms | batch size mean / max | overhead per call: "
          "CPU ms, p50 ms, wall ms |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in [int(text) for text in args.threads.split(",")]:
        version = TrivialVersion()
        rate, cpu, latencies = load(lambda face: version.run("serving_default", {"images": face}), threads,
                                    args.seconds)
        direct_p50 = np.percentile(latencies, 50) * 1e3
        print(f"| {threads} | direct | {rate:.0f} | {cpu:.4f} | {direct_p50:.3f} | "
              f"{np.percentile(latencies, 99) * 1e3:.3f} | 1 / 1 | |")
        version = TrivialVersion()
        batcher = Batcher(parameters).start()

        def batched(face: np.ndarray) -> Dict[str, np.ndarray]:  # as serving.server's Predict does it
            with batcher.admission():
                return batcher.run("m", version, "serving_default", {"images": face}, 60.0)

        try:
            batched_rate, batched_cpu, latencies = load(batched, threads, args.seconds)
        finally:
            batcher.stop()
        p50 = np.percentile(latencies, 50) * 1e3
        print(f"| {threads} | batched | {batched_rate:.0f} | {batched_cpu:.4f} | {p50:.3f} | "
              f"{np.percentile(latencies, 99) * 1e3:.3f} | {np.mean(version.sizes):.1f} / {max(version.sizes)} | "
              f"{batched_cpu - cpu:+.4f}, {p50 - direct_p50:+.3f}, {1e3 / batched_rate - 1e3 / rate:+.3f} |")


if __name__ == "__main__":
    main()
