"""Periodic verification during training, as arcface_torch's `val_targets`: benchmarks named `NAME=PATH` (an
insightface .bin, an LFW folder, a pairs CSV, a CFP folder; tfface.evaluation.benchmarks) verified every N epochs or
every N optimizer steps with the flip test (sum, as insightface), logged, and the best backbone by one of them kept.
"""
import json
import os
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfface.data.pipeline import normalize_images
from tfface.evaluation import evaluate_pairs, flip_test_embeddings, load_images
from tfface.evaluation.benchmarks import Benchmark, read_benchmark
from tfface.training.callbacks import (
    save_layer_weights_atomically,
    save_weights_atomically,
    write_bytes_atomically,
    write_json_atomically,
)

BEST_DIR = "best"  # a run dir of its own (config.yaml, run.json, backbone/head weights): tools.export reads it
BEST_JSON = "best.json"


class LoadedBenchmark(NamedTuple):
    """A benchmark's distinct images uint8 [N, H, W, 3] at the network's input size and its pairs (indices [P] into
    them, issame bool [P], folds int [P] or None)."""

    name: str
    images: np.ndarray
    first: np.ndarray
    second: np.ndarray
    issame: np.ndarray
    folds: Optional[np.ndarray]


def load_benchmark(benchmark: Benchmark, image_size: Tuple[int, int]) -> LoadedBenchmark:
    """Reads a benchmark's pairs and decodes its distinct images, resized to image_size (H, W)."""
    pairs = read_benchmark(benchmark, image_size)
    images = pairs.source if isinstance(pairs.source, np.ndarray) else load_images(list(pairs.source), image_size)
    return LoadedBenchmark(benchmark.name, images, pairs.first, pairs.second, pairs.issame, pairs.folds)


def verify_loaded(backbone: keras.Model, loaded: LoadedBenchmark, batch_size: int = 64) -> Dict[str, object]:
    """`evaluate_pairs`' numbers for the backbone's flip-test embeddings of a loaded benchmark."""

    def embed(batch: np.ndarray) -> np.ndarray:
        return backbone(normalize_images(batch), training=False)["embedding"].numpy()

    embeddings = flip_test_embeddings(embed, loaded.images, batch_size=batch_size)
    return evaluate_pairs(embeddings[loaded.first], embeddings[loaded.second], loaded.issame, folds=loaded.folds)


def verify_backbone(backbone: keras.Model, pairs_dir: str, image_size: Optional[Tuple[int, int]] = None,
                    batch_size: int = 64) -> Dict[str, object]:
    """`evaluate_pairs`' numbers on the LFW-layout folder `pairs_dir` (pairs.txt, one folder per identity);
    image_size: (H, W), default the backbone's input size."""
    image_size = tuple(image_size or backbone.input_shape[1:3])
    return verify_loaded(backbone, load_benchmark(Benchmark("pairs", "lfw", Path(pairs_dir)), image_size), batch_size)


class VerificationCallback(keras.callbacks.Callback):
    """Verifies `benchmarks` every `every_epochs` epochs, or every `every_steps` optimizer steps when given.

    Each verification gives `<name>_accuracy`, `<name>_accuracy_std` and `<name>_auc` per benchmark: the latest of
    an epoch join that epoch's logs (so history.csv, TensorBoard's epoch scalars and the progress line show them;
    an epoch without one logs nothing of it); with a `work_dir`, every verification is also written to TensorBoard
    at its optimizer step (`work_dir/logs/verification`) and printed. With `keep_best` (a benchmark's name), each
    verification that beats the best accuracy so far of that benchmark writes `work_dir/best/`: backbone and head
    weights, config.yaml and run.json (a run dir tools.export takes) and best.json (benchmark, accuracy, epoch, step,
    every benchmark's numbers), best.json last; a resumed run starts from the best recorded there.
    """

    def __init__(self, benchmarks: Sequence[Benchmark], every_epochs: int = 1, every_steps: Optional[int] = None,
                 image_size: Optional[Tuple[int, int]] = None, batch_size: int = 64, keep_best: Optional[str] = None,
                 work_dir: Optional[str] = None):
        super().__init__()
        names = [benchmark.name for benchmark in benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmarks: the names must differ, got {names}")
        if keep_best is not None and keep_best not in names:
            raise ValueError(f"keep_best: no benchmark named '{keep_best}' (benchmarks: {', '.join(names) or 'none'})")
        if keep_best is not None and work_dir is None:
            raise ValueError("keep_best needs a work_dir to keep the best weights in")
        self.benchmarks = list(benchmarks)
        self.every_epochs = max(int(every_epochs), 1)
        self.every_steps = every_steps
        self.image_size = image_size
        self.batch_size = batch_size
        self.keep_best = keep_best
        self.work_dir = work_dir
        self._loaded: Optional[list] = None
        self._latest: Dict[str, float] = {}
        self._epoch = 0
        self._best = -np.inf
        self._writer = None

    @property
    def best_dir(self) -> Optional[str]:
        return None if self.work_dir is None else os.path.join(self.work_dir, BEST_DIR)

    def on_train_begin(self, logs=None):
        if self._loaded is None:
            size = tuple(self.image_size or self.model.backbone.input_shape[1:3])
            self._loaded = [load_benchmark(benchmark, size) for benchmark in self.benchmarks]
        if self.keep_best is not None:
            recorded = Path(self.best_dir, BEST_JSON)
            if recorded.is_file():
                self._best = float(json.loads(recorded.read_text())["accuracy"])
        if self.work_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.work_dir, "logs", "verification"))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps is None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_steps == 0:
            self.verify(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_steps is None and (epoch + 1) % self.every_epochs == 0:
            self.verify(int(self.model.optimizer.iterations.numpy()))
        if logs is not None:
            logs.update(self._latest)
        self._latest = {}

    def verify(self, step: int) -> Dict[str, float]:
        """Verifies every benchmark now; returns (and keeps for the epoch's logs) the logged numbers."""
        values: Dict[str, float] = {}
        results = {}
        for loaded in self._loaded:
            result = verify_loaded(self.model.backbone, loaded, self.batch_size)
            results[loaded.name] = {key: float(result[key]) for key in ("accuracy_mean", "accuracy_std", "auc")}
            values[f"{loaded.name}_accuracy"] = results[loaded.name]["accuracy_mean"]
            values[f"{loaded.name}_accuracy_std"] = results[loaded.name]["accuracy_std"]
            values[f"{loaded.name}_auc"] = results[loaded.name]["auc"]
        self._latest = values
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(key, value)
            self._writer.flush()
            shown = ", ".join(f"{name} {numbers['accuracy_mean']:.4f} +- {numbers['accuracy_std']:.4f}"
                              for name, numbers in results.items())
            print(f"verification at step {step} (epoch {self._epoch + 1}): {shown}")
        if self.keep_best is not None and results[self.keep_best]["accuracy_mean"] > self._best:
            self._best = results[self.keep_best]["accuracy_mean"]
            self._keep(step, results)
        return values

    def _keep(self, step: int, results: Dict) -> None:
        folder = self.best_dir
        os.makedirs(folder, exist_ok=True)
        Path(folder, BEST_JSON).unlink(missing_ok=True)  # what follows is not the recorded best until rewritten
        save_weights_atomically(self.model.backbone, os.path.join(folder, "backbone.weights.h5"))
        save_layer_weights_atomically(self.model.head, os.path.join(folder, "head.weights.npz"))
        for name in ("config.yaml", "run.json"):
            source = Path(self.work_dir, name)
            if source.is_file():
                write_bytes_atomically(os.path.join(folder, name), source.read_bytes())
        write_json_atomically({"benchmark": self.keep_best, "accuracy": self._best, "epoch": self._epoch + 1,
                               "step": step, "benchmarks": results}, os.path.join(folder, BEST_JSON))
