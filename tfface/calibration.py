"""The decision threshold of a face model, calibrated on a verification benchmark and stored with the model.

    calibration = calibrate(scores, issame, benchmark="cfp_fp", far_target=1e-3, ...)   # scores: cosine [P]
    write_calibration("models/arcface/1", calibration)      # or model.tflite, model.onnx
    calibration = read_calibration(load_embedder(path))     # None when the model has none
    same = score > calibration.threshold                    # cosine similarity of L2-normalised embeddings

The record lives under the key "calibration" of the model's metadata JSON (tfface.embedders): a SavedModel's
assets.extra/tfface_metadata.json, the FILE.json beside a .tflite or .onnx file; the file is rewritten atomically
(tfface.atomic) with its other keys kept. `tools.evaluate --calibrate NAME` writes it; tfface.faces, tools.verify and
tools.gallery read it.

Both thresholds are on the cosine similarity of the two embeddings and a pair is "same" when its score is strictly
above the threshold:
- threshold (best accuracy): the midpoint between the two neighbouring pair scores where the accuracy over all the
  benchmark's pairs is highest (the lowest such midpoint on ties); `accuracy` is that accuracy.
- far_threshold: the (k + 1)-th highest impostor score with k = floor(far_target x impostors), so at most k
  impostor pairs score above it (tar_at_far's rule); `far` and `tar` are measured there on the same pairs. A
  benchmark with n impostor pairs cannot resolve a FAR below 1 / n: then k = 0 and the threshold is the highest
  impostor score.
"""
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from tfface import atomic
from tfface.embedders import FILE_FORMATS, METADATA_FILE, metadata_path, resolve_saved_model
from tfface.errors import ConfigError

CALIBRATION_KEY = "calibration"
SCORE = "cosine similarity of L2-normalised embeddings; same person iff score > threshold"


@dataclass(frozen=True)
class Calibration:
    """A model's calibrated decision thresholds (cosine similarity) and where they come from."""

    benchmark: str  # the --benchmark name
    benchmark_path: str
    pairs: int
    impostor_pairs: int
    flip: str  # how embeddings were fused with their mirror's: "sum" or "none"
    accuracy_mean: float  # the benchmark's k-fold accuracy (tools.evaluate), in [0, 1]
    accuracy_std: float
    threshold: float  # best accuracy over all pairs
    accuracy: float  # accuracy over all pairs at `threshold`
    far_target: float
    far_threshold: float
    far: float  # FAR over all pairs at far_threshold
    tar: float  # TAR over all pairs at far_threshold
    score: str = SCORE

    def to_json(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record, source: str) -> "Calibration":
        """The record of a metadata file; ConfigError naming `source` when a field is missing or not a number."""
        if not isinstance(record, dict):
            raise ConfigError(f"{source}: '{CALIBRATION_KEY}' must be an object, got {type(record).__name__}")
        names = {field.name for field in fields(cls)}
        missing = sorted(names - set(record) - {"score"})
        if missing:
            raise ConfigError(f"{source}: '{CALIBRATION_KEY}' lacks {', '.join(missing)}")
        for name in ("threshold", "far_threshold", "accuracy", "far_target"):
            if not isinstance(record[name], (int, float)) or not math.isfinite(record[name]):
                raise ConfigError(f"{source}: '{CALIBRATION_KEY}.{name}' must be a finite number, got {record[name]!r}")
        return cls(**{name: record[name] for name in names if name in record})


def best_accuracy_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple:
    """(threshold, accuracy) of the rule "same iff score > threshold" with the best accuracy over the pairs
    (scores [P] float, issame bool [P]); candidates are midpoints between neighbouring distinct scores and
    the points just below the lowest and above the highest score."""
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1e-6]])
    same_sorted, diff_sorted = np.sort(scores[issame]), np.sort(scores[~issame])
    true_accepts = len(same_sorted) - np.searchsorted(same_sorted, candidates, side="right")
    true_rejects = np.searchsorted(diff_sorted, candidates, side="right")
    accuracy = (true_accepts + true_rejects) / len(scores)
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def calibrate(scores, issame, benchmark: str, benchmark_path: str, flip: str, accuracy_mean: float,
              accuracy_std: float, far_target: float = 1e-3) -> Calibration:
    """The Calibration of a benchmark's pair scores (cosine [P]) and labels (bool [P]); see the module docstring."""
    scores = np.asarray(scores, np.float64)
    issame = np.asarray(issame, bool)
    if scores.ndim != 1 or scores.shape != issame.shape or not np.all(np.isfinite(scores)):
        raise ValueError(f"scores and issame must be finite [P] of one length, got {scores.shape} and {issame.shape}")
    if issame.all() or not issame.any():
        raise ValueError("calibration needs both same and different pairs")
    if not 0.0 < far_target < 1.0:
        raise ValueError(f"--far must be in (0, 1), got {far_target}")
    threshold, accuracy = best_accuracy_threshold(scores, issame)
    impostors_descending = np.sort(scores[~issame])[::-1]
    allowed = int(np.floor(far_target * len(impostors_descending) + 1e-9))
    far_threshold = float(impostors_descending[min(allowed, len(impostors_descending) - 1)])
    return Calibration(
        benchmark=benchmark, benchmark_path=str(benchmark_path), pairs=int(len(scores)),
        impostor_pairs=int(len(impostors_descending)), flip=flip, accuracy_mean=float(accuracy_mean),
        accuracy_std=float(accuracy_std), threshold=threshold, accuracy=accuracy, far_target=float(far_target),
        far_threshold=far_threshold, far=float(np.mean(scores[~issame] > far_threshold)),
        tar=float(np.mean(scores[issame] > far_threshold)),
    )


def metadata_file(model_path) -> Path:
    """The metadata JSON of a model: FILE.json beside a .tflite / .onnx file, or a SavedModel's (the newest
    version of a model base path) assets.extra/tfface_metadata.json."""
    model_path = Path(model_path)
    if model_path.suffix.lower() in FILE_FORMATS:
        if not model_path.is_file():
            raise FileNotFoundError(f"model: not found: {model_path}")
        return metadata_path(model_path)
    return resolve_saved_model(model_path) / METADATA_FILE


def write_calibration(model_path, calibration: Calibration) -> Path:
    """Stores `calibration` in the model's metadata file (created when the model has none; other keys kept),
    atomically; returns the file."""
    path = metadata_file(model_path)
    metadata = {}
    if path.is_file():
        try:
            metadata = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error}); the calibration was not written") from None
        if not isinstance(metadata, dict):
            raise ConfigError(f"{path}: expected a JSON object; the calibration was not written")
    metadata[CALIBRATION_KEY] = calibration.to_json()
    try:
        atomic.write_json(path, metadata)
    except OSError as error:
        raise ConfigError(f"{path}: cannot write the calibration: [Errno {error.errno}] {error.strerror}") from None
    return path


def read_calibration(embedder) -> Optional[Calibration]:
    """The Calibration in a loaded embedder's metadata (tfface.embedders), or None when it has none."""
    metadata = embedder.metadata or {}
    if CALIBRATION_KEY not in metadata:
        return None
    return Calibration.from_json(metadata[CALIBRATION_KEY], f"{embedder.path} metadata")


def no_calibration_message(model_path) -> str:
    """The line a consumer prints for a model without a calibrated threshold."""
    return (f"model {model_path} has no calibrated threshold: run python -m tools.evaluate --model {model_path} "
            f"--benchmark NAME=PATH --calibrate NAME --out REPORT (or give --threshold)")
