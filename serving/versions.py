"""Model versions under a TF Serving model base path (`<base_path>/<version>/saved_model.pb`): loading, swapping in
the newest one, and the per-version states that ModelService.GetModelStatus reports.

Like tensorflow_model_server's default policy (latest, 1 version), a model serves only its newest complete version:
`poll()` loads a newer one before swapping it in (requests keep the version they started with) and retires the old
one; when the served folder disappears the next newest takes its place. A version that fails to load is reported
(GetModelStatus says only that it failed; the log has the path and the error) and tried again once its files change
(a version folder that was still being written when first seen).

Before a version is served, each of its signatures runs once on a batch of one zero image (as TF Serving's warm-up
requests): TensorFlow's first run of a function is slow, and many first runs at once far slower (16 concurrent first
Predicts of MobileFaceNet 112x112 took 45-53 s on 2 cores, against 2.7 s for one), which made the first clients
after a start or a swap time out.
"""
import logging
import threading
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2

from serving.errors import ServingError, echoed
from tfface.embedders import MAX_VERSION, model_versions

State = get_model_status_pb2.ModelVersionStatus.State
LOG = logging.getLogger("serving")


def read_signature_defs(version_dir: Path) -> Dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the 'serve' graph of a SavedModel, without internal ones (names starting with '__')."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            signatures = meta_graph.signature_def.items()
            return {name: signature for name, signature in signatures if not name.startswith("__")}
    raise ValueError(f"{version_dir}: no MetaGraph tagged 'serve'")


class LoadedVersion:
    """One loaded SavedModel version: `signature_defs` (as GetModelMetadata reports them) and `run`."""

    format = "savedmodel"

    def __init__(self, version: int, path: Path):
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        saved_model = tf.saved_model.load(str(path), tags=["serve"])
        self._functions = {name: saved_model.signatures[name] for name in self.signature_defs}
        for name, signature in self.signature_defs.items():
            self._warm_up(name, signature)

    def _warm_up(self, name: str, signature: meta_graph_pb2.SignatureDef) -> None:
        """Runs signature `name` once on zeros (unknown dims 1); a failure is logged, not raised (some models need
        real inputs)."""
        inputs = {}
        for key, info in signature.inputs.items():
            if info.tensor_shape.unknown_rank:
                return
            shape = [max(dim.size, 1) for dim in info.tensor_shape.dim]
            inputs[key] = np.zeros(shape, dtype=tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
        try:
            self.run(name, inputs)
        except Exception as error:  # noqa: BLE001 - a warm-up is an optimisation only
            LOG.warning("version %d: warm-up of signature '%s' on zeros failed: %s", self.version, name, error)

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        if name not in self.signature_defs:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"signature '{echoed(name)}' not found in version {self.version}; "
                f"available: {', '.join(sorted(self.signature_defs))}",
            )
        return self.signature_defs[name]

    def run(self, name: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs signature `name` on checked numpy inputs; returns its outputs as numpy arrays."""
        outputs = self._functions[name](**{key: tf.constant(value) for key, value in inputs.items()})
        return {key: value.numpy() for key, value in outputs.items()}


class VersionStatus(NamedTuple):
    """What GetModelStatus says about one version: its State and, for a failed load, the error message."""

    state: int
    error_message: str = ""

    @property
    def error_code(self) -> int:
        return error_codes_pb2.UNKNOWN if self.error_message else error_codes_pb2.OK


def folder_fingerprint(folder: Path) -> Tuple:
    """(relative path, size, mtime in ns) of every file under `folder`, sorted: changes when any file does."""
    entries = []
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except OSError:  # removed while listing: the next poll sees the change
            continue
        if path.is_file():
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class ModelVersions:
    """The served version of model `name` (newest under `base_path`) and the state of every version seen."""

    def __init__(self, name: str, base_path, load: Callable[[int, Path], LoadedVersion] = LoadedVersion):
        self.name = name
        self._load_version = load  # (version, folder) -> LoadedVersion or a subclass (serving/tflite_pool.py)
        self.base_path = Path(base_path)
        if not self.base_path.is_dir():
            raise FileNotFoundError(f"model '{name}': base path not found: {self.base_path}")
        self._served: Optional[LoadedVersion] = None
        self._statuses: Dict[int, VersionStatus] = {}
        self._failed_files: Dict[int, Tuple] = {}  # failed version -> its folder_fingerprint when it failed
        self._lock = threading.Lock()  # guards _served and _statuses; loading happens outside it
        self._ignored: set = set()  # version folders already warned of
        self._poll_lock = threading.Lock()  # one poll at a time

    def poll(self) -> None:
        """Looks at the base path once and serves its newest loadable version (see the module docstring)."""
        with self._poll_lock:
            on_disk = model_versions(self.base_path, self._ignore) if self.base_path.is_dir() else {}
            failed = {
                version for version, files in self._failed_files.items()
                if version in on_disk and folder_fingerprint(on_disk[version]) == files
            }
            candidates = sorted((version for version in on_disk if version not in failed), reverse=True)
            served = self._served.version if self._served else None
            for version in candidates:
                if version == served or self._load(version, on_disk[version]):
                    return
            if served is not None:
                self._swap(None)

    def _ignore(self, folder: Path) -> None:
        """Warns once of a version folder whose number is beyond int64 (it is never loaded)."""
        if folder.name not in self._ignored:
            self._ignored.add(folder.name)
            LOG.warning("model '%s': ignoring version folder %s: its number is larger than %d (versions are int64)",
                        self.name, folder, MAX_VERSION)

    def _load(self, version: int, path: Path) -> bool:
        with self._lock:
            self._statuses[version] = VersionStatus(State.LOADING)
        LOG.info("model '%s': loading version %d from %s", self.name, version, path)
        files = folder_fingerprint(path)
        try:
            loaded = self._load_version(version, path)
        except Exception as error:  # any failure of a SavedModel load is reported, not raised into the server
            LOG.error("model '%s': version %d failed to load from %s: %s", self.name, version, path, error)
            self._failed_files[version] = files
            with self._lock:
                self._statuses[version] = VersionStatus(
                    State.END, f"version {version} failed to load; the server log has the details"
                )
            return False
        self._failed_files.pop(version, None)
        self._swap(loaded)
        return True

    def _swap(self, loaded: Optional[LoadedVersion]) -> None:
        with self._lock:
            previous, self._served = self._served, loaded
            if loaded is not None:
                self._statuses[loaded.version] = VersionStatus(State.AVAILABLE)
            if previous is not None:
                self._statuses[previous.version] = VersionStatus(State.END)
        if loaded is not None:
            LOG.info("model '%s': serving version %d (%s)", self.name, loaded.version, loaded.format)
        if previous is not None:
            LOG.info("model '%s': version %d unloaded", self.name, previous.version)

    def get(self, version: Optional[int] = None) -> LoadedVersion:
        """The served version, or `version` when it is the served one; NOT_FOUND otherwise, UNAVAILABLE when none."""
        with self._lock:
            served = self._served
        if served is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"model '{self.name}' has no version loaded yet")
        if version is not None and version != served.version:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"model '{self.name}' version {version} is not being served (serving version {served.version})",
            )
        return served

    def statuses(self, version: Optional[int] = None) -> List[tuple]:
        """[(version, VersionStatus)] of every version seen (newest first), or of `version` alone (NOT_FOUND if
        never seen)."""
        with self._lock:
            statuses = dict(self._statuses)
        if version is None:
            return sorted(statuses.items(), reverse=True)
        if version not in statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"model '{self.name}' has no version {version}")
        return [(version, statuses[version])]
