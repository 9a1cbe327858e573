"""Sharded TFRecord writing with atomic finalisation, and the data set description `<prefix>.json`.

A shard is written as `<prefix>-00000.tfrecord.tmp`; only when the writer closes cleanly are the shards renamed to
`<prefix>-00000.tfrecord` (os.replace) and the description written (tfface.atomic), so an interrupted run leaves
no final-looking file. The description is the commit marker: readers list shards from it, never by globbing.
"""
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from tfface import atomic
from tfface.data import schema

REQUIRED_KEYS = ("num_examples", "num_classes", "class_counts", "image_size", "num_landmarks", "has", "shards")


def description_path(out_dir, prefix: str = "train") -> Path:
    """Where the description of data set `prefix` in `out_dir` lives."""
    return Path(out_dir) / f"{prefix}.json"


def _feature_shape(feature: tf.train.Feature, field: str) -> list[int]:
    """Shape of optional `field` stored in `feature` (float list length, or the serialised map's shape)."""
    if field in schema.MAP_FIELDS:
        proto = tensor_pb2.TensorProto.FromString(feature.bytes_list.value[0])
        return [dim.size for dim in proto.tensor_shape.dim]
    length = len(feature.float_list.value)
    return [length // 2, 2] if field == schema.LANDMARKS else [length]


class ShardedTFRecordWriter:
    """Writes `tf.train.Example`s into shards of `examples_per_shard` records and describes the result.

    Use as a context manager; `write(example)` per example. On a clean exit the shards get their final names and
    `out_dir/<prefix>.json` is written (see `read_description`); on an exception the temporary shards are removed.
    `class_names` (optional list, index = label) is kept in the description.
    """

    def __init__(self, out_dir, prefix: str = "train", examples_per_shard: int = 2000, *, class_names=None):
        is_int = isinstance(examples_per_shard, (int, np.integer)) and not isinstance(examples_per_shard, bool)
        if not is_int or examples_per_shard < 1:
            raise ValueError(f"examples_per_shard must be an int >= 1, got {examples_per_shard!r}")
        if not prefix or not re.fullmatch(r"[\w.-]+", prefix):
            raise ValueError(f"prefix must be a non-empty file-name stem (letters, digits, _ . -), got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.examples_per_shard = int(examples_per_shard)
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self._shards: list[str] = []
        self._file = None
        self._in_shard = 0
        self._closed = False
        self._class_counts: Counter = Counter()
        self._present: Counter = Counter()
        self._shapes: dict[str, list[int]] = {}
        self._image_size = None
        self._image_format = None
        self._num_examples = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def _shard_name(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}.tfrecord"

    def _record_stats(self, example: tf.train.Example) -> None:
        """Check `example` against the earlier ones, then count it in the description's statistics."""
        features = example.features.feature
        for key in (schema.IMAGE_ENCODED, schema.IMAGE_FORMAT, schema.LABEL, schema.IMAGE_HEIGHT, schema.IMAGE_WIDTH):
            if key not in features:
                raise ValueError(f"example {self._num_examples} lacks feature {key!r}; build it with make_example")
        present = [
            field for field in schema.OPTIONAL_FIELDS
            if schema.presence_key(field) in features and features[schema.presence_key(field)].int64_list.value[0]
        ]
        shapes = {field: _feature_shape(features[field], field) for field in present if field != schema.TRUE_LABEL}
        for field, shape in shapes.items():
            expected = self._shapes.get(field, shape)
            if shape != expected:
                raise ValueError(
                    f"example {self._num_examples}: {field} has shape {shape}, but earlier examples have {expected}"
                )
        label = features[schema.LABEL].int64_list.value[0]
        if self.class_names is not None and label >= len(self.class_names):
            raise ValueError(
                f"example {self._num_examples}: label {label} has no entry in class_names "
                f"({len(self.class_names)} names)"
            )
        self._shapes.update(shapes)
        self._present.update(present)
        self._class_counts[label] += 1
        if self._image_size is None:
            self._image_size = [features[schema.IMAGE_HEIGHT].int64_list.value[0],
                                features[schema.IMAGE_WIDTH].int64_list.value[0]]
            self._image_format = features[schema.IMAGE_FORMAT].bytes_list.value[0].decode()

    def write(self, example: tf.train.Example) -> None:
        """Append one example (from `schema.make_example`), opening a new shard when the current one is full."""
        if self._closed:
            raise RuntimeError(f"writer for {self.out_dir / self.prefix} is closed")
        if not isinstance(example, tf.train.Example):
            raise TypeError(f"example must be a tf.train.Example, got {type(example).__name__}")
        self._record_stats(example)
        if self._file is None or self._in_shard == self.examples_per_shard:
            self._finish_shard()
            self._shards.append(self._shard_name(len(self._shards)))
            self._file = tf.io.TFRecordWriter(str(self.out_dir / (self._shards[-1] + ".tmp")))
            self._in_shard = 0
        self._file.write(example.SerializeToString())
        self._in_shard += 1
        self._num_examples += 1

    def _finish_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def description(self) -> dict:
        """The data set description of everything written so far (what close() stores as json)."""
        num_classes = max(self._class_counts) + 1 if self._class_counts else 0
        landmarks_shape = self._shapes.get(schema.LANDMARKS)
        return {
            "num_examples": self._num_examples,
            "num_classes": num_classes,
            "class_counts": {str(label): count for label, count in sorted(self._class_counts.items())},
            "image_size": self._image_size,
            "image_format": self._image_format,
            "num_landmarks": landmarks_shape[0] if landmarks_shape else 0,
            "has": {
                field: self._num_examples > 0 and self._present[field] == self._num_examples
                for field in schema.OPTIONAL_FIELDS
            },
            "present_counts": {field: self._present[field] for field in schema.OPTIONAL_FIELDS},
            "feature_shapes": dict(self._shapes),
            "shards": list(self._shards),
            "class_names": self.class_names,
        }

    def close(self) -> None:
        """Finish the last shard, give all shards their final names and write `<prefix>.json` atomically."""
        if self._closed:
            return
        self._finish_shard()
        description = self.description()
        self._closed = True
        json_path = description_path(self.out_dir, self.prefix)
        json_path.unlink(missing_ok=True)
        for name in self._shards:
            os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
        stale = re.compile(re.escape(self.prefix) + r"-\d{5}\.tfrecord")
        for path in self.out_dir.iterdir():
            if stale.fullmatch(path.name) and path.name not in self._shards:
                path.unlink()
        atomic.write_json(json_path, description)

    def abort(self) -> None:
        """Stop without finalising: remove this run's temporary shards; earlier final files stay untouched."""
        self._finish_shard()
        self._closed = True
        for name in self._shards:
            (self.out_dir / (name + ".tmp")).unlink(missing_ok=True)


def read_description(out_dir, prefix: str = "train") -> dict:
    """Load `out_dir/<prefix>.json` (written by ShardedTFRecordWriter); class_counts keys become ints.

    Raises FileNotFoundError or ValueError naming the path when it is missing or not a valid description.
    """
    path = description_path(out_dir, prefix)
    if not path.is_file():
        raise FileNotFoundError(f"data set description not found: {path} (write it with ShardedTFRecordWriter)")
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"data set description {path} is not valid JSON: {error}") from error
    if not isinstance(description, dict):
        raise ValueError(f"data set description {path} must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in description]
    if missing:
        raise ValueError(f"data set description {path} lacks keys {missing}")
    try:
        description["class_counts"] = {int(label): int(n) for label, n in description["class_counts"].items()}
    except (AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"data set description {path}: class_counts must map int labels to counts") from error
    description.setdefault("class_names", None)
    return description
