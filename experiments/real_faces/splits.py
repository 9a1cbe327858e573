"""The training splits each paper's condition needs, derived from the clean CFP training set (identities 001-300):
label noise (LATSE) and a long tail (center invariant loss). Both are deterministic for a seed and use only the
training set's images and identities, so they stay identity-disjoint from the validation and test folds.

- `noisy_labels(labels, num_classes, fraction, seed)`: round(fraction * N) images, drawn without replacement, each
  relabelled to another training identity drawn uniformly among the other classes.
- `long_tail_keep(labels, seed, tail_fraction, keep)`: round(tail_fraction * C) of the identities (the tail) keep
  `keep` of their images each (drawn without replacement); the other identities keep all of theirs.
- `write_split(source, out, labels, keep)`: the source TFRecords rewritten in their order with the given labels
  (`true_label` holds the clean label, so a gate's precision and recall on the injected noise can be measured),
  leaving out the records not kept; the description keeps the source's class names.
- `write_noisy` / `write_long_tail`: the two splits with their lists (`path,true_class,noisy_class` of every
  relabelled image; `path,class,tail` of every kept image) as CSV, each written to a temporary file and renamed.
"""
import csv
import io
from pathlib import Path
from typing import List, Optional

import numpy as np
import tensorflow as tf

from tfface import atomic
from tfface.data import schema
from tfface.data.writer import ShardedTFRecordWriter, read_description


def noisy_labels(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """int [N] clean labels -> int [N] labels with round(fraction * N) of them moved to another class."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(labels), size=int(round(fraction * len(labels))), replace=False))
    noisy = labels.copy()
    other = rng.integers(0, num_classes - 1, size=len(chosen))  # one of the num_classes - 1 other classes
    noisy[chosen] = other + (other >= labels[chosen])
    return noisy


def long_tail_keep(labels: np.ndarray, seed: int, tail_fraction: float = 0.5, keep: int = 2) -> tuple:
    """(bool [N] which images a long-tailed split keeps, int [T] the tail classes, sorted): the tail identities
    keep `keep` images each."""
    labels = np.asarray(labels, np.int64)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    tail = np.sort(rng.choice(classes, size=int(round(tail_fraction * len(classes))), replace=False))
    kept = np.ones(len(labels), bool)
    for label in tail:
        members = np.flatnonzero(labels == label)
        if len(members) < keep:
            raise ValueError(f"class {label} has {len(members)} images, fewer than keep={keep}")
        kept[members] = False
        kept[rng.choice(members, size=keep, replace=False)] = True
    return kept, tail


def read_records(source) -> List[tf.train.Example]:
    """Every record of a tools.make_tfrecords folder, in the description's shard order."""
    description = read_description(source)
    examples = []
    for shard in description["shards"]:
        for record in tf.data.TFRecordDataset(str(Path(source) / shard)):
            examples.append(tf.train.Example.FromString(record.numpy()))
    return examples


def _label(example: tf.train.Example) -> int:
    return example.features.feature[schema.LABEL].int64_list.value[0]


def _source_id(example: tf.train.Example) -> str:
    feature = example.features.feature.get(schema.SOURCE_ID)
    return feature.bytes_list.value[0].decode() if feature is not None and feature.bytes_list.value else ""


def write_split(source, out, labels: np.ndarray, keep: Optional[np.ndarray] = None) -> None:
    """The source records with `labels` (int [N]) as their labels and the source labels as `true_label`; records
    where `keep` (bool [N]) is false are left out."""
    examples = read_records(source)
    if len(labels) != len(examples):
        raise ValueError(f"{source}: {len(examples)} records but {len(labels)} labels")
    class_names = read_description(source)["class_names"]
    with ShardedTFRecordWriter(out, class_names=class_names) as writer:
        for index, example in enumerate(examples):
            if keep is not None and not keep[index]:
                continue
            relabelled = tf.train.Example()
            relabelled.CopyFrom(example)
            features = relabelled.features.feature
            features[schema.TRUE_LABEL].int64_list.value[:] = [_label(example)]
            features[schema.presence_key(schema.TRUE_LABEL)].int64_list.value[:] = [1]
            features[schema.LABEL].int64_list.value[:] = [int(labels[index])]
            writer.write(relabelled)


def _write_csv(path: Path, header: List[str], rows: List[list]) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    atomic.write_text(path, text.getvalue())


def _names(source) -> List[str]:
    names = read_description(source)["class_names"]
    return names if names is not None else [str(label) for label in range(read_description(source)["num_classes"])]


def write_noisy(source, out, list_path, fraction: float, seed: int) -> np.ndarray:
    """The label-noise split in `out` and its list of relabelled images; returns the noisy labels [N]."""
    examples = read_records(source)
    clean = np.array([_label(example) for example in examples], np.int64)
    names = _names(source)
    noisy = noisy_labels(clean, len(names), fraction, seed)
    write_split(source, out, noisy)
    changed = np.flatnonzero(noisy != clean)
    _write_csv(Path(list_path), ["path", "true_class", "noisy_class"],
               [[_source_id(examples[i]), names[clean[i]], names[noisy[i]]] for i in changed])
    return noisy


def write_long_tail(source, out, list_path, seed: int, tail_fraction: float = 0.5, keep: int = 2) -> np.ndarray:
    """The long-tailed split in `out` and its list of kept images; returns the kept mask [N]."""
    examples = read_records(source)
    clean = np.array([_label(example) for example in examples], np.int64)
    names = _names(source)
    kept, tail = long_tail_keep(clean, seed, tail_fraction, keep)
    write_split(source, out, clean, kept)
    _write_csv(Path(list_path), ["path", "class", "tail"],
               [[_source_id(examples[i]), names[clean[i]], int(clean[i] in tail)] for i in np.flatnonzero(kept)])
    return kept
