"""Callbacks of a training run: the end of an epoch as one atomic step that survives SIGKILL, and a stop at the
first non-finite loss or weight."""
import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
from keras.src.saving import saving_lib  # the in-memory HDF5 store behind Model.save_weights

from tfface import atomic


class TrainingDiverged(RuntimeError):
    """The loss or a weight became NaN or infinite; the message names the epoch (and step), 1-based."""


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def save_weights_atomically(layer_or_model, path: str) -> None:
    """Writes the `.weights.h5` file `layer_or_model.save_weights(path)` would write, but built in memory and then
    written to a temporary file and renamed: a kill never truncates `path`, and a read-only or full disk is an
    OSError naming `path` with no partial file left (HDF5 writing straight to such a disk crashes the process)."""
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(layer_or_model, weights_store=store, assets_store=None, inner_path="",
                           visited_saveables=set())
    store.close()
    write_bytes_atomically(path, buffer.getvalue())


def write_error(path: str, error: OSError) -> OSError:
    """The OSError of a failed write, naming the target `path` (not the temporary file) with the errno."""
    return OSError(error.errno, error.strerror or str(error), str(path))


def save_layer_weights_atomically(layer: keras.layers.Layer, path: str) -> None:
    """Writes a layer's weights (get_weights order) to an .npz through a temporary file and a rename."""
    buffer = io.BytesIO()
    np.savez(buffer, *layer.get_weights())
    write_bytes_atomically(path, buffer.getvalue())


def write_bytes_atomically(path: str, data: bytes) -> None:
    """`data` written to `path` through a temporary file and a rename; a failure is an OSError naming `path`."""
    try:
        atomic.write_bytes(path, data)
    except OSError as error:
        raise write_error(path, error) from None


def load_layer_weights(layer: keras.layers.Layer, path: str) -> None:
    """Inverse of save_layer_weights_atomically; a shape mismatch raises ValueError naming the file."""
    with np.load(path) as archive:
        weights = [archive[f"arr_{index}"] for index in range(len(archive.files))]
    try:
        layer.set_weights(weights)
    except ValueError as error:
        raise ValueError(f"{path}: does not fit {layer.name}: {error}") from None


def write_json_atomically(data, path: str) -> None:
    write_bytes_atomically(path, json.dumps(data, indent=2).encode("utf-8"))


def non_finite_weights(model: keras.Model) -> List[str]:
    """Paths of the model's weights that hold a NaN or an infinity (every replica's copy or shard is read)."""
    strategy = model.distribute_strategy
    return [
        weight.path
        for weight in model.weights
        if not all(np.all(np.isfinite(value)) for value in strategy.experimental_local_results(weight.value))
    ]


class StopOnNonFinite(keras.callbacks.Callback):
    """Raises TrainingDiverged at the first step whose loss is NaN or infinite, and at the end of an epoch whose
    weights are not all finite, before any later callback saves them. Put it first in the callback list: the backup,
    the checkpoints and the history then keep the last finite epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        broken = non_finite_weights(self.model)
        if broken:
            shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
            raise TrainingDiverged(f"weights became non-finite at the end of epoch {epoch + 1}: {shown}")


class HistoryFile:
    """history.csv: one row per epoch (`epoch` counted from 1, as the console and the checkpoint names count, then
    the logged values in sorted column order). A value an epoch did not measure stays empty: the columns are the union of every row's keys. Rewritten whole each time,
    to a temporary file and renamed."""

    def __init__(self, path: str):
        self.path = path
        self.rows: List[Dict[str, str]] = []
        if os.path.isfile(path):
            with open(path, newline="") as handle:
                self.rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]

    def keep_before(self, epoch: int) -> None:
        """Drops the rows of epochs >= `epoch` (1-based)."""
        self.rows = [row for row in self.rows if int(row["epoch"]) < epoch]

    def add(self, epoch: int, logs: Dict) -> None:
        self.keep_before(epoch)
        self.rows.append({"epoch": str(epoch), **{key: str(_plain(value)) for key, value in logs.items()}})

    def text(self) -> str:
        columns = ["epoch"] + sorted({key for row in self.rows for key in row} - {"epoch"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self) -> None:
        write_bytes_atomically(self.path, self.text().encode("utf-8"))


def _plain(value):
    """A logged value as a Python number (tensors and numpy scalars included)."""
    array = np.asarray(keras.ops.convert_to_numpy(value))
    return array.item() if array.ndim == 0 else array.tolist()


class EpochCommit(keras.callbacks.Callback):
    """The end of an epoch as one atomic step, and the resume of a killed run.

    Files in the work dir: backup/epoch-NNN.weights.h5 (the whole trainer, optimizer state included),
    backup/training_metadata.json ({"epoch": N, "weights": that file}), checkpoints/epoch-NNN.weights.h5 (a hard
    link to the backup's file, when `checkpoints`) and history.csv (HistoryFile). N counts epochs from 1.

    At the end of epoch N, in order (STEPS): the backup weights, the checkpoint and history.csv with row N are each
    written to a temporary name and renamed; then the metadata is renamed into place: this rename is the commit;
    then the previous backup's weights are removed. A run started again reads the committed epoch E and makes the
    rest agree before training: history rows and checkpoints after E and backup files E does not name are removed,
    E's weights and optimizer state loaded, and training goes on at epoch E + 1. So a kill at any point loses at most
    the epoch in progress, and never trains an epoch twice. The backup is kept at the end: starting a finished run
    again trains no more epochs.
    """

    STEPS = ("save_backup", "link_checkpoint", "write_history", "commit", "remove_previous")

    def __init__(self, work_dir: str, checkpoints: bool = True):
        super().__init__()
        self.backup_dir = os.path.join(work_dir, "backup")
        self.checkpoint_dir = os.path.join(work_dir, "checkpoints") if checkpoints else None
        self.metadata_path = os.path.join(self.backup_dir, "training_metadata.json")
        self.history = HistoryFile(os.path.join(work_dir, "history.csv"))

    @staticmethod
    def weights_name(epoch: int) -> str:
        return f"epoch-{epoch:03d}.weights.h5"

    def committed(self) -> Tuple[int, Optional[str]]:
        """(last committed epoch, 1-based, and its backup weights file name); (0, None) when none is. A backup
        written before the commit step existed (Keras' latest.weights.h5, no "weights" in the metadata) reads too."""
        if not os.path.isfile(self.metadata_path):
            return 0, None
        with open(self.metadata_path) as handle:
            metadata = json.load(handle)
        return int(metadata["epoch"]), metadata.get("weights", "latest.weights.h5")

    # --------------------------------------------------------------------------------------------- resume
    def on_train_begin(self, logs=None):
        epoch, weights = self.committed()
        self._reconcile(epoch, weights)
        if epoch:
            self.model.load_weights(os.path.join(self.backup_dir, weights))
            self.model._initial_epoch = epoch

    def _reconcile(self, epoch: int, weights: Optional[str]) -> None:
        """Removes what a kill left beyond the committed `epoch`: backup weights other than its `weights`, later
        checkpoints and history rows, partial files."""
        for folder in (self.backup_dir, self.checkpoint_dir):
            if folder is None or not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if "partial" in name:
                    os.remove(os.path.join(folder, name))
                elif name.endswith(".weights.h5") and folder == self.backup_dir and name != weights:
                    os.remove(os.path.join(folder, name))
                elif name.endswith(".weights.h5") and folder == self.checkpoint_dir and _epoch_of(name) > epoch:
                    os.remove(os.path.join(folder, name))
        if any(int(row["epoch"]) > epoch for row in self.history.rows):
            self.history.keep_before(epoch + 1)
            self.history.write()

    # --------------------------------------------------------------------------------------------- commit
    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1
        self.save_backup(number)
        self.link_checkpoint(number)
        self.write_history(number, logs or {})
        self.commit(number)
        self.remove_previous(number)

    def save_backup(self, epoch: int) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        save_weights_atomically(self.model, os.path.join(self.backup_dir, self.weights_name(epoch)))

    def link_checkpoint(self, epoch: int) -> None:
        if self.checkpoint_dir is None:
            return
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        target = os.path.join(self.checkpoint_dir, self.weights_name(epoch))
        temporary = target[: -len(".weights.h5")] + ".partial.weights.h5"
        source = os.path.join(self.backup_dir, self.weights_name(epoch))
        try:
            _remove_quietly(temporary)
            os.link(source, temporary)  # the backup's file is never written again: sharing it is safe
            os.replace(temporary, target)
        except OSError as error:
            _remove_quietly(temporary)
            raise write_error(target, error) from None

    def write_history(self, epoch: int, logs: Dict) -> None:
        self.history.add(epoch, logs)
        self.history.write()

    def commit(self, epoch: int) -> None:
        write_json_atomically({"epoch": epoch, "weights": self.weights_name(epoch)}, self.metadata_path)

    def remove_previous(self, epoch: int) -> None:
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != self.weights_name(epoch):
                _remove_quietly(os.path.join(self.backup_dir, name))


def _epoch_of(name: str) -> int:
    """epoch-NNN.weights.h5 -> NNN; 0 for other names."""
    stem = Path(name).name.split(".", 1)[0]
    digits = stem[len("epoch-"):] if stem.startswith("epoch-") else ""
    return int(digits) if digits.isdigit() else 0
