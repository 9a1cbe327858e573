"""insightface training folders read without MXNet: `train.rec` + `train.idx` (MXNet RecordIO) and `property`.

The folder (faces_emore/, ms1m-retinaface-t1/, glint360k/, faces_webface_112x112/, ...):

    train.rec    records, each framed by dmlc RecordIO: uint32 magic 0xced7230a, uint32 lrecord (top 3 bits: the
                 continuation flag cflag, 0 = whole record, 1/2/3 = first/middle/last part of a record whose payload
                 held the magic at a 4-byte boundary; low 29 bits: the part's length in bytes), the bytes, zero
                 padding to a multiple of 4. A record in parts is joined with the magic between its parts.
    train.idx    text lines "KEY<TAB>BYTE_OFFSET" of every record in train.rec
    property     "NUM_CLASSES,HEIGHT,WIDTH"
    *.bin        verification sets (tfface.evaluation.readers.insightface_bin)

A record's payload is MXNet's IRHeader, little-endian `<IfQQ` (flag uint32, label float32, id uint64, id2 uint64),
then `flag` float32 labels when flag > 0, then the image's encoded bytes (JPEG as distributed). The identity label
of an image is the scalar label (flag 0) or the first of the vector (flag > 0). As arcface_torch's dataset.py: when
record 0 has flag > 0, its labels (a, b) say that images are the records with keys 1 .. a-1 (records a .. b-1 hold
per-identity ranges and are not read); otherwise every record of train.idx is an image.

Bad records (each a `verify.BadRecord` naming train.rec and the record key): the .idx points past the end of the
file, a wrong magic, a truncated record, a payload shorter than its header, a label that is not an integer in
[0, classes of `property`), image bytes that are neither JPEG nor PNG. `scan` checks the framing and headers of
every record (vectorised over the .idx: 51,594 records/s measured on 20,000 on a loaded 2-core machine, .idx read
included); it does not decode the images (MS1MV2's 5.8M JPEGs would take tens of minutes), so an image with a valid
signature that fails to decode stops training with TensorFlow's error.
"""
import mmap
import struct
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfface.data.verify import BadRecord

MAGIC = 0xCED7230A
LENGTH_BITS = 29
FRAME = struct.Struct("<II")  # magic, lrecord
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG")
_SCAN_CHUNK = 1 << 20  # records whose headers are gathered at once
CHUNK_BYTES = 16 << 20  # the spans of the .rec tf.data reads as one string each


def is_insightface_folder(folder, prefix: str = "train") -> bool:
    """True when `folder` holds `<prefix>.rec` (an insightface training folder)."""
    return (Path(folder) / f"{prefix}.rec").is_file()


def read_property(path) -> Tuple[int, int, int]:
    """`property` -> (num_classes, height, width); a malformed file is a ValueError naming it."""
    text = Path(path).read_text().strip()
    fields = text.split(",")
    if len(fields) != 3 or not all(field.strip().isdigit() for field in fields) or int(fields[0]) < 1:
        raise ValueError(f"{path}: expected 'NUM_CLASSES,HEIGHT,WIDTH' (integers, classes >= 1), got {text[:60]!r}")
    classes, height, width = (int(field) for field in fields)
    return classes, height, width


def read_index(path) -> Dict[int, int]:
    """`.idx` -> {record key: byte offset}; a malformed line is a ValueError naming file and line."""
    index: Dict[int, int] = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip().isdigit() or not fields[1].strip().isdigit():
                raise ValueError(f"{path} line {number}: expected 'KEY<TAB>OFFSET' (integers), got {line.strip()[:60]!r}")
            index[int(fields[0])] = int(fields[1])
    if not index:
        raise ValueError(f"{path}: no records listed")
    return index


class RecordError(ValueError):
    """A record that cannot be read; the message says why (without file and key)."""


class RecordFile:
    """A memory-mapped `.rec`: `payload(offset)` gives one record's bytes, parts joined."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            self.size = self.path.stat().st_size
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""

    def payload(self, offset: int) -> bytes:
        parts: List[bytes] = []
        position = offset
        while True:
            if position + FRAME.size > self.size:
                where = "the .idx points past the end" if position == offset else "a part runs past the end"
                raise RecordError(f"{where} of the file (offset {position}, file size {self.size})")
            magic, lrecord = FRAME.unpack_from(self._map, position)
            if magic != MAGIC:
                raise RecordError(f"wrong magic 0x{magic:08x} at byte offset {position} (expected 0x{MAGIC:08x})")
            flag, length = lrecord >> LENGTH_BITS, lrecord & ((1 << LENGTH_BITS) - 1)
            start = position + FRAME.size
            if start + length > self.size:
                raise RecordError(f"truncated: {length} bytes at byte offset {start}, but the file ends at {self.size}")
            if (flag in (2, 3)) != bool(parts) or flag > 3:
                raise RecordError(f"continuation flag {flag} out of sequence at byte offset {position}")
            parts.append(self._map[start:start + length])
            if flag in (0, 3):
                return MAGIC.to_bytes(4, "little").join(parts)
            position = start + ((length + 3) & ~3)


def unpack(payload: bytes) -> Tuple[np.ndarray, bytes]:
    """A record's payload -> (labels float32 [1] or [flag], the bytes after the header)."""
    if len(payload) < IR_HEADER.size:
        raise RecordError(f"payload of {len(payload)} bytes is shorter than its {IR_HEADER.size}-byte header")
    flag, label, _, _ = IR_HEADER.unpack_from(payload)
    if flag == 0:
        return np.array([label], np.float32), payload[IR_HEADER.size:]
    end = IR_HEADER.size + 4 * flag
    if len(payload) < end:
        raise RecordError(f"header announces {flag} labels, but the payload ends after {len(payload)} bytes")
    return np.frombuffer(payload[IR_HEADER.size:end], np.float32).copy(), payload[end:]


def _label_problem(labels: np.ndarray, num_classes: int) -> str:
    label = float(labels[0])
    if not np.isfinite(label) or label != int(label) or not 0 <= label < num_classes:
        return f"label {label:g} outside the {num_classes} classes of property (integers 0..{num_classes - 1})"
    return ""


class InsightfaceFolder:
    """An insightface training folder: the image records' keys, their offsets, the class count and image size.

    keys: int64 [N] the image records' keys in .idx order; offsets: int64 [N] (-1: the key is not in the .idx).
    """

    def __init__(self, folder, prefix: str = "train"):
        self.folder = Path(folder)
        self.rec_path = self.folder / f"{prefix}.rec"
        self.idx_path = self.folder / f"{prefix}.idx"
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"no {prefix}.rec in {self.folder}")
        if not self.idx_path.is_file():
            raise FileNotFoundError(f"{self.rec_path} has no index beside it: {self.idx_path} is missing")
        self.file = RecordFile(self.rec_path)
        index = read_index(self.idx_path)
        property_path = self.folder / "property"
        if not property_path.is_file():
            raise FileNotFoundError(f"{self.folder}: no 'property' file (NUM_CLASSES,HEIGHT,WIDTH)")
        self.num_classes, height, width = read_property(property_path)
        self.image_size = (height, width)
        keys = sorted(index)
        first = min(keys)
        try:
            payload0 = self.file.payload(index[first])
            labels0, _ = unpack(payload0)
        except RecordError as error:
            raise ValueError(f"{self.rec_path} record {first}: {error}") from None
        if first == 0 and IR_HEADER.unpack_from(payload0)[0] > 0:  # arcface_torch: images are keys 1 .. a - 1
            keys = list(range(1, int(labels0[0])))
        self.keys = np.asarray(keys, np.int64)
        self.offsets = np.asarray([index.get(key, -1) for key in keys], np.int64)
        if not len(self.keys):
            raise ValueError(f"{self.rec_path}: record 0 says there are no image records")

    def __len__(self) -> int:
        return len(self.keys)

    def description(self) -> dict:
        """The fields of a TFRecord description (tfface.data.writer) the pipeline and trainer read."""
        return {"num_examples": len(self), "num_classes": self.num_classes, "image_size": list(self.image_size),
                "has": {}, "shards": [], "feature_shapes": {}, "image_format": "jpeg"}

    def read(self, position: int) -> Tuple[bytes, int]:
        """(image bytes, label) of image number `position` (0-based in `keys`); RecordError when bad."""
        if self.offsets[position] < 0:
            raise RecordError(f"not listed in {self.idx_path.name}")
        labels, image = unpack(self.file.payload(int(self.offsets[position])))
        problem = _label_problem(labels, self.num_classes)
        if problem:
            raise RecordError(problem)
        if not image.startswith(IMAGE_SIGNATURES):
            raise RecordError(f"the image bytes are neither JPEG nor PNG (start {image[:4].hex()})")
        return image, int(labels[0])

    def bad_record(self, position: int, problem: str) -> BadRecord:
        return BadRecord(str(self.rec_path), int(self.keys[position]), problem)


class Scan(NamedTuple):
    """The bad image records of an insightface folder (each independent, through the .idx: none makes others
    unreadable). The interface of `verify.Scan` that training reads."""

    num_examples: int
    bad: List[BadRecord]

    @property
    def good(self) -> int:
        return self.num_examples - len(self.bad)

    @property
    def lost(self) -> int:
        return 0

    def bad_keys(self) -> set:
        return {record.index for record in self.bad}


class RecordTable(NamedTuple):
    """Where each image record's image lies, per position in `InsightfaceFolder.keys`.

    image_offsets, image_lengths: int64 [N], the image bytes in the .rec (offset -1: see `joined`, or bad);
    labels: int32 [N]; joined: position -> image bytes of the good records not read in one piece (stored in parts);
    bad: the bad records.
    """

    image_offsets: np.ndarray
    image_lengths: np.ndarray
    labels: np.ndarray
    joined: Dict[int, bytes]
    bad: List[BadRecord]


def _gather(data: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """uint8 [len(starts), width]: the bytes at each start (starts + width <= len(data))."""
    return data[starts[:, None] + np.arange(width)]


def read_table(data: InsightfaceFolder) -> RecordTable:
    """Reads the framing, header, label and image signature of every image record: vectorised over the .idx for
    whole records (cflag 0), one by one for the others (records in parts, and the bad ones, whose problem is
    named)."""
    size = data.file.size
    raw = np.frombuffer(data.file._map, np.uint8) if size else np.zeros(0, np.uint8)
    count = len(data)
    image_offsets = np.full(count, -1, np.int64)
    image_lengths = np.zeros(count, np.int64)
    labels = np.zeros(count, np.int32)
    joined: Dict[int, bytes] = {}
    bad: List[BadRecord] = []
    head = FRAME.size + IR_HEADER.size + 4  # frame, IRHeader, the first label of a vector
    for begin in range(0, count, _SCAN_CHUNK):
        offsets = data.offsets[begin:begin + _SCAN_CHUNK]
        whole = (offsets >= 0) & (offsets + head <= size)
        raw_head = _gather(raw, np.where(whole, offsets, 0), head) if size >= head else \
            np.zeros((len(offsets), head), np.uint8)
        words = raw_head[:, :8].copy().view("<u4")
        length = (words[:, 1] & ((1 << LENGTH_BITS) - 1)).astype(np.int64)
        flag = raw_head[:, 8:12].copy().view("<u4")[:, 0].astype(np.int64)
        label = np.where(flag == 0, raw_head[:, 12:16].copy().view("<f4")[:, 0],
                         raw_head[:, 32:36].copy().view("<f4")[:, 0])
        image_at = offsets + FRAME.size + IR_HEADER.size + 4 * flag
        clean = whole & (words[:, 0] == MAGIC) & (words[:, 1] >> LENGTH_BITS == 0)
        clean &= (offsets + FRAME.size + length <= size) & (length >= IR_HEADER.size + 4 * flag + 4)
        signature = _gather(raw, np.where(clean, image_at, 0), 4) if size >= 4 else raw_head[:, :4]
        jpeg = (signature[:, 0] == 0xFF) & (signature[:, 1] == 0xD8) & (signature[:, 2] == 0xFF)
        png = (signature[:, :4] == np.frombuffer(b"\x89PNG", np.uint8)).all(axis=1)
        clean &= np.isfinite(label) & (label >= 0) & (label < data.num_classes) & (label == np.floor(label))
        clean &= jpeg | png
        positions = begin + np.flatnonzero(clean)
        image_offsets[positions] = image_at[clean]
        image_lengths[positions] = (offsets + FRAME.size + length - image_at)[clean]
        labels[positions] = label[clean].astype(np.int32)
        for position in begin + np.flatnonzero(~clean):  # one by one: records in parts, and naming the bad ones
            try:
                image, labels[position] = data.read(int(position))
                joined[int(position)] = image
            except RecordError as error:
                bad.append(data.bad_record(int(position), str(error)))
    return RecordTable(image_offsets, image_lengths, labels, joined, bad)


def scan(folder, prefix: str = "train") -> Scan:
    """Checks every image record of an insightface folder (see the module docstring and `read_table`)."""
    data = InsightfaceFolder(folder, prefix)
    return Scan(len(data), read_table(data).bad)


def encoded_examples(data: InsightfaceFolder, training: bool, seed: Optional[int], skip: Optional[Scan] = None
                     ) -> tf.data.Dataset:
    """{"encoded" string, "label" int32(, "skipped_records" int32)} per image record, read by tf.data alone.

    The .rec is cut into spans of about CHUNK_BYTES at record boundaries; each span is read as one string
    (FixedLengthRecordDataset with its offset as header) and its images cut out of it (tf.strings.substr), records
    stored in parts coming from a small in-memory table. Not training: in file order (the .idx order of the
    distributed folders). Training: the spans are
    shuffled each pass and 16 read at once, interleaved (the TFRecord shards' scheme; make_dataset's shuffle buffer
    follows). Bad records (found by `read_table`) are never read: without `skip` the first raises ValueError
    naming file and record; with `skip` (a `Scan`) they are left out and "skipped_records" counts them on each pass's
    first example (0 on the others).
    """
    table = read_table(data)
    if table.bad and skip is None:
        raise ValueError(table.bad[0].line())
    good = np.ones(len(data), bool)
    if table.bad:
        good[np.isin(data.keys, np.fromiter((record.index for record in table.bad), np.int64))] = False
    positions = np.flatnonzero(good)
    positions = positions[np.argsort(data.offsets[positions], kind="stable")]  # file order
    # spans of records in file order; a record in parts sits in its neighbours' span and is read from `joined`
    offsets = table.image_offsets[positions]
    known = offsets >= 0
    span_of = data.offsets[positions] // CHUNK_BYTES
    spans, first = np.unique(span_of, return_index=True)
    counts = np.diff(np.append(first, len(positions)))
    ends = np.where(known, offsets + table.image_lengths[positions], 0)
    span_start = np.array([offsets[a:a + n][known[a:a + n]].min() if known[a:a + n].any() else 0
                           for a, n in zip(first, counts)], np.int64)
    span_end = np.maximum.reduceat(ends, first) if len(first) else np.zeros(0, np.int64)
    span_length = np.maximum(span_end - span_start, 1)
    joined_order = {position: number for number, position in enumerate(sorted(table.joined))}
    joined_bytes = tf.constant([table.joined[position] for position in sorted(table.joined)] or [b""])
    record_offset = tf.constant(np.where(known, offsets - np.repeat(span_start, counts), -1))
    record_length = tf.constant(table.image_lengths[positions])
    record_label = tf.constant(table.labels[positions])
    record_joined = tf.constant(np.array([joined_order.get(int(p), 0) for p in positions], np.int64))
    path, size = str(data.rec_path), data.file.size
    starts, lengths = tf.constant(span_start), tf.constant(span_length)
    firsts, numbers = tf.constant(first.astype(np.int64)), tf.constant(counts.astype(np.int64))

    def span_records(span):
        blob = tf.data.FixedLengthRecordDataset(path, lengths[span], header_bytes=starts[span],
                                                footer_bytes=size - starts[span] - lengths[span])

        def cut(text):
            records = tf.range(firsts[span], firsts[span] + numbers[span])
            offset = tf.gather(record_offset, records)
            pieces = tf.strings.substr(text, tf.maximum(offset, 0), tf.gather(record_length, records))
            encoded = tf.where(offset >= 0, pieces, tf.gather(joined_bytes, tf.gather(record_joined, records)))
            return tf.data.Dataset.from_tensor_slices({"encoded": encoded,
                                                       "label": tf.gather(record_label, records)})

        return blob.flat_map(cut)

    dataset = tf.data.Dataset.range(len(spans))
    if training:
        dataset = dataset.shuffle(len(spans), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(span_records, cycle_length=min(len(spans), 16) if training else 1,
                                 num_parallel_calls=tf.data.AUTOTUNE if training else None)
    if skip is None:
        return dataset
    skipped = len(data) - len(positions)
    return dataset.enumerate().map(lambda index, example: {
        **example, "skipped_records": tf.where(index == 0, skipped, 0)})


def decode(record: dict) -> dict:
    """{"encoded", "label"(, "skipped_records")} -> the same with "image" uint8 [H, W, 3] for "encoded"."""
    example = {key: value for key, value in record.items() if key != "encoded"}
    example["image"] = tf.io.decode_image(record["encoded"], channels=3, expand_animations=False)
    return example
