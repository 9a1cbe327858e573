"""--prefer_tflite_model: a version folder's `model.tflite` (tools.export --with_tflite) served by pools of LiteRT
interpreters instead of its SavedModel, as tensorflow_model_server does.

    load = version_loader(prefer_tflite_model=True, num_tflite_pools=2, num_tflite_interpreters_per_pool=1)
    loaded = load(3, Path("models/arcface/3"))   # a TFLiteVersion, or a LoadedVersion without model.tflite

A TFLiteVersion answers like the SavedModel's LoadedVersion: the same SignatureDefs (read from the folder's
saved_model.pb, keeping those the .tflite file has, with the same input and output keys), the same checks and warm-up.
It holds `num_tflite_pools` pools of `num_tflite_interpreters_per_pool` interpreters (TF Serving's defaults: one pool
per CPU core, one interpreter each); a run takes a whole free pool (waiting for one when all are busy) and splits its
batch across the pool's interpreters, one slice each, run in parallel. An interpreter is only ever used by the run
holding its pool, so no interpreter runs on two threads at once. Each interpreter gets cores / (pools x interpreters)
threads (at least 1).
"""
import os
import queue
from concurrent import futures
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from serving.batching import batchable
from serving.versions import LoadedVersion, read_signature_defs
from tfface.embedders import TFLITE_IN_SAVED_MODEL

Arrays = Dict[str, np.ndarray]


class TFLiteVersion(LoadedVersion):
    """One version served from its `model.tflite` by pools of LiteRT interpreters (module docstring)."""

    format = "tflite"

    def __init__(self, version: int, path: Path, num_pools: int, interpreters_per_pool: int):
        from ai_edge_litert.interpreter import Interpreter

        self.version, self.path = version, path
        model_path = str(path / TFLITE_IN_SAVED_MODEL)
        threads = max(1, (os.cpu_count() or 1) // (num_pools * interpreters_per_pool))
        self._free: "queue.Queue[List[Dict]]" = queue.Queue()
        for _ in range(num_pools):
            pool = []
            for _ in range(interpreters_per_pool):
                interpreter = Interpreter(model_path=model_path, num_threads=threads)
                names = interpreter.get_signature_list()
                pool.append({name: interpreter.get_signature_runner(name) for name in names})
            self._free.put(pool)
        self.signature_defs = {name: signature for name, signature in read_signature_defs(path).items()
                               if name in names}
        if not self.signature_defs:
            raise ValueError(f"{model_path}: none of its signatures {sorted(names)} is in the SavedModel")
        for name, signature in self.signature_defs.items():
            keys = {"inputs": set(names[name]["inputs"]), "outputs": set(names[name]["outputs"])}
            for side in keys:
                if keys[side] != set(getattr(signature, side)):
                    raise ValueError(f"{model_path}: signature '{name}' has {side} {sorted(keys[side])}, the "
                                     f"SavedModel's has {sorted(getattr(signature, side))}")
        self._slices = (futures.ThreadPoolExecutor(num_pools * interpreters_per_pool, thread_name_prefix="tflite")
                        if interpreters_per_pool > 1 else None)
        for name, signature in self.signature_defs.items():
            self._warm_up(name, signature)

    def run(self, name: str, inputs: Arrays) -> Arrays:
        """Runs signature `name` on checked numpy inputs in a free pool; returns its outputs as numpy arrays."""
        pool = self._free.get()
        try:
            rows = len(next(iter(inputs.values())))
            parts = min(len(pool), rows)
            if parts <= 1 or not batchable(self.signature_defs[name]):
                return pool[0][name](**inputs)
            bounds = np.linspace(0, rows, parts + 1).astype(int)
            slices = [self._slices.submit(pool[index][name], **{key: value[bounds[index] : bounds[index + 1]]
                                                                for key, value in inputs.items()})
                      for index in range(parts)]
            answers = [part.result() for part in slices]
            return {key: np.concatenate([answer[key] for answer in answers]) for key in answers[0]}
        finally:
            self._free.put(pool)


def version_loader(prefer_tflite_model: bool, num_tflite_pools: int,
                   num_tflite_interpreters_per_pool: int) -> Callable[[int, Path], LoadedVersion]:
    """The function ModelVersions loads a version folder with: its model.tflite when preferred and present, else its
    SavedModel."""

    def load(version: int, path: Path) -> LoadedVersion:
        if prefer_tflite_model and (path / TFLITE_IN_SAVED_MODEL).is_file():
            return TFLiteVersion(version, path, num_tflite_pools, num_tflite_interpreters_per_pool)
        return LoadedVersion(version, path)

    return load
