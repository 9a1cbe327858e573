"""Callbacks of a training run: atomic per-epoch checkpoints and backups that survive SIGKILL."""
import io
import json
import os

import keras
import numpy as np

from tfface.data.image_io import write_atomic


def save_weights_atomically(layer_or_model, path: str) -> None:
    """Writes `path` (must end in .weights.h5) through a temporary file and a rename, so a kill never truncates it."""
    temporary = path[: -len(".weights.h5")] + ".partial.weights.h5"
    layer_or_model.save_weights(temporary, overwrite=True)
    os.replace(temporary, path)


def save_layer_weights_atomically(layer: keras.layers.Layer, path: str) -> None:
    """Writes a layer's weights (get_weights order) to an .npz through a temporary file and a rename."""
    temporary = f"{path}.partial.npz"
    np.savez(temporary, *layer.get_weights())
    os.replace(temporary, path)


def load_layer_weights(layer: keras.layers.Layer, path: str) -> None:
    """Inverse of save_layer_weights_atomically; a shape mismatch raises ValueError naming the file."""
    with np.load(path) as archive:
        weights = [archive[f"arr_{index}"] for index in range(len(archive.files))]
    try:
        layer.set_weights(weights)
    except ValueError as error:
        raise ValueError(f"{path}: does not fit {layer.name}: {error}") from None


def write_json_atomically(data, path: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(temporary, path)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore (restores weights, optimizer state and the epoch when a killed run starts again),
    with each backup written to a temporary file and renamed, so a kill during the write keeps the previous backup.
    The backup is kept when training ends: starting a finished run again trains no more epochs."""

    def __init__(self, backup_dir: str, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        save_weights_atomically(self.model, self._weights_path)
        write_json_atomically(
            {"epoch": self._current_epoch, "batch": self._last_batch_seen}, self._training_metadata_path
        )


class AtomicCSVLogger(keras.callbacks.CSVLogger):
    """Keras' CSVLogger (one row per epoch; a resumed run appends to the rows already there) with the whole file
    rewritten to a temporary file and renamed after every epoch, so a kill never leaves a half-written row for the
    resumed run to append to."""

    def on_train_begin(self, logs=None):
        previous = ""
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as handle:  # keep the csv module's \r\n line ends
                previous = handle.read()
        self.append_header = not previous.split("\n", 1)[0]
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = io.StringIO()
        self.csv_file.write(previous)
        self.writer = None
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        write_atomic(self.filename, self.csv_file.getvalue().encode("utf-8"))


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole trainer every epoch as DIR/epoch-NNN.weights.h5 (1-based), atomically."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        save_weights_atomically(self.model, os.path.join(self.directory, f"epoch-{epoch + 1:03d}.weights.h5"))
