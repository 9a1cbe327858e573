"""Record-by-record check of a TFRecord data set (see `schema`): what would stop training, found before it starts.

A record is bad when its shard cannot be read there (a truncated shard, flipped bytes: TFRecord's CRC fails; the rest
of that shard is unreadable too), when it is not a `tf.train.Example`, lacks `label` or `image/encoded`, has a label
outside [0, num_classes), or its image does not decode. `scan` reads every record of every shard once and decodes
its image, as one pass of training's input pipeline would.
"""
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Set, Tuple

import tensorflow as tf
from google.protobuf.message import DecodeError

from tfface.data import schema
from tfface.data.writer import description_path, read_description


class BadRecord(NamedTuple):
    shard: str  # the shard's path
    index: int  # 0-based position of the record in its shard
    problem: str

    def line(self) -> str:
        return f"{self.shard} record {self.index}: {self.problem}"


class Scan(NamedTuple):
    """readable: shard path -> records readable from its start; bad: the bad records, in shard order;
    num_examples: what the data set's description says."""

    readable: Dict[str, int]
    bad: List[BadRecord]
    num_examples: int

    def _readable_bad(self) -> List[BadRecord]:
        return [record for record in self.bad if record.index < self.readable.get(record.shard, 0)]

    @property
    def good(self) -> int:
        """Records that train: readable and not bad."""
        return sum(self.readable.values()) - len(self._readable_bad())

    @property
    def lost(self) -> int:
        """Records the description counts that cannot be read at all (after a shard's framing error)."""
        return max(self.num_examples - sum(self.readable.values()), 0)

    def skipped_keys(self) -> Set[Tuple[int, int]]:
        """(shard number, record index) of the readable bad records."""
        number = {shard: position for position, shard in enumerate(self.readable)}
        return {(number[record.shard], record.index) for record in self._readable_bad()}


def record_problem(serialized: bytes, num_classes: int) -> str:
    """What is wrong with one serialized record ("" when nothing)."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError:
        return "not a tf.train.Example"
    features = example.features.feature
    labels = features[schema.LABEL].int64_list.value if schema.LABEL in features else []
    images = features[schema.IMAGE_ENCODED].bytes_list.value if schema.IMAGE_ENCODED in features else []
    if len(labels) != 1:
        return f"no '{schema.LABEL}'" if not labels else f"{len(labels)} values in '{schema.LABEL}'"
    if not 0 <= labels[0] < num_classes:
        return f"label {labels[0]} outside [0, {num_classes})"
    if len(images) != 1:
        return f"no '{schema.IMAGE_ENCODED}'" if not images else f"{len(images)} values in '{schema.IMAGE_ENCODED}'"
    try:
        tf.io.decode_image(images[0], channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as error:
        return f"'{schema.IMAGE_ENCODED}' does not decode ({error.message.splitlines()[0][:80]})"
    return ""


def scan(data_dir, prefix: str = "train") -> Scan:
    """Checks every record of the data set `data_dir/<prefix>.json` describes; see the module docstring."""
    description = read_description(data_dir, prefix)
    num_classes = int(description["num_classes"])
    readable: Dict[str, int] = {}
    bad: List[BadRecord] = []
    for name in description["shards"]:
        shard = str(Path(data_dir) / name)
        if not Path(shard).is_file():
            raise FileNotFoundError(f"shard listed in {description_path(data_dir, prefix)} is missing: {shard}")
        count = 0
        try:
            for serialized in tf.data.TFRecordDataset(shard).as_numpy_iterator():
                problem = record_problem(serialized, num_classes)
                if problem:
                    bad.append(BadRecord(shard, count, problem))
                count += 1
        except tf.errors.DataLossError as error:
            # "truncated record at 1587", "corrupted record at 802", after the op's {{function_node ...}} prefix
            found = re.search(r"\w+ record at \d+", error.message)
            where = found.group(0) if found else error.message.splitlines()[0]
            bad.append(BadRecord(shard, count, f"{where} (byte offset): this record and the rest of the shard "
                                               "cannot be read"))
        readable[shard] = count
    result = Scan(readable, bad, int(description["num_examples"]))
    if result.lost and not any(record.index >= readable[record.shard] for record in bad):  # cut at a record's end
        bad.append(BadRecord(str(description_path(data_dir, prefix)), sum(readable.values()),
                             f"the shards hold {result.lost} record(s) fewer than this description counts"))
    return result
