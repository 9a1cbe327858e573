"""The tf.data reader: TFRecord shards (see `schema`) -> augmented, normalised dict batches.

Geometry conventions: landmark pixel coordinates are continuous (the image spans [0, W] x [0, H]), so a resize
scales them by the size ratio, a crop subtracts its offset, and a horizontal flip maps x to W - x and swaps the
left/right landmark indices. Emitted landmarks are normalised by the output image size: (x / w, y / h).
"""
import glob
import json
import os
import socket
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfface.data import recordio, schema
from tfface import atomic
from tfface.data.writer import read_description

EXTRA_FEATURES = ("landmarks", "pose", "light", "attributes", "true_label", "depth", "albedo", "source_id")

# new_landmarks[i] = mirrored_landmarks[permutation[i]]
LANDMARK_FLIP_PERMUTATIONS = {
    # left eye, right eye, nose, left mouth corner, right mouth corner
    5: (1, 0, 2, 4, 3),
    # iBUG 68: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer mouth 48-59, inner mouth 60-67
    68: (
        16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
        26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
        27, 28, 29, 30,
        35, 34, 33, 32, 31,
        45, 44, 43, 42, 47, 46,
        39, 38, 37, 36, 41, 40,
        54, 53, 52, 51, 50, 49, 48,
        59, 58, 57, 56, 55,
        64, 63, 62, 61, 60,
        67, 66, 65,
    ),
}

# Mirroring negates yaw and roll, keeps pitch.
POSE_FLIP_SIGNS = (-1.0, 1.0, -1.0)


def normalize_images(images):
    """uint8 (or float in [0, 255]) pixels, any shape -> float32 (pixel - 127.5) / 128, in [-0.996, 0.996]."""
    return (keras.ops.cast(images, "float32") - 127.5) / 128.0


def denormalize_images(images):
    """Inverse of `normalize_images`: float32 -> uint8 pixels, rounded and clipped to [0, 255]."""
    pixels = keras.ops.clip(keras.ops.round(keras.ops.cast(images, "float32") * 128.0 + 127.5), 0.0, 255.0)
    return keras.ops.cast(pixels, "uint8")


def flip_landmarks(landmarks, width):
    """Mirror pixel landmarks [..., M, 2] of an image `width` pixels wide: x -> width - x, left/right swapped.

    M must be 5 or 68 (see LANDMARK_FLIP_PERMUTATIONS).
    """
    landmarks = tf.convert_to_tensor(landmarks, tf.float32)
    num_points = landmarks.shape[-2]
    if num_points not in LANDMARK_FLIP_PERMUTATIONS:
        raise ValueError(
            f"no left/right flip permutation for {num_points} landmarks; known layouts: "
            f"{sorted(LANDMARK_FLIP_PERMUTATIONS)} points (use flip=False for other layouts)"
        )
    mirrored = tf.stack([tf.cast(width, tf.float32) - landmarks[..., 0], landmarks[..., 1]], axis=-1)
    return tf.gather(mirrored, LANDMARK_FLIP_PERMUTATIONS[num_points], axis=-2)


def _size_pair(name: str, value) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be an int or a pair (height, width) of ints >= 1, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_features(features, description: dict, data_dir: Path, prefix: str) -> tuple:
    features = tuple(features)
    unknown = [name for name in features if name not in EXTRA_FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}; available: {list(EXTRA_FEATURES)}")
    for name in features:
        if name != "source_id" and not description["has"].get(name, False):
            present = description.get("present_counts", {}).get(name, 0)
            raise ValueError(
                f"feature {name!r} was requested, but data set {prefix!r} in {data_dir} does not have it "
                f"(present in {present} of {description['num_examples']} examples): convert only faces that have it "
                f"(tools.align --no-face skip leaves out the photos without a detected face), or ask for none "
                f"(--set data.features=[]) when no enabled part reads it"
            )
    return features


def _read_records(files: list[str], training: bool, seed) -> tf.data.Dataset:
    """Serialized records: shards interleaved in parallel (shuffled) in training, in written order otherwise."""
    if not training:
        return tf.data.TFRecordDataset(files)
    shards = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
    return shards.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _read_good_records(files: list[str], skip, training: bool, seed) -> tf.data.Dataset:
    """{"serialized", "skipped_records"} without the bad records of `skip` (a verify.Scan): each shard read up to
    its first unreadable record, the bad ones left out; "skipped_records" (int32) counts the bad records left out
    just before this one, so the batches' sum over an epoch is the number skipped in it."""
    keys = np.array(sorted(shard << 32 | index for shard, index in skip.skipped_keys()) or [-1], np.int64)
    bad = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, np.ones_like(keys)), np.int64(0))
    readable = np.array([skip.readable[path] for path in files], np.int64)

    def numbered(shard, path, count):
        records = tf.data.TFRecordDataset(path).take(count).enumerate()
        return records.map(lambda index, record: (tf.bitwise.left_shift(shard, 32) | index, record))

    shards = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), files, readable))
    if training:
        shards = shards.shuffle(len(files), seed=seed)
    records = shards.interleave(numbered, cycle_length=min(len(files), 16) if training else 1,
                                num_parallel_calls=tf.data.AUTOTUNE if training else None)

    def count(skipped_so_far, element):
        key, record = element
        is_bad = bad.lookup(key) > 0
        return tf.where(is_bad, skipped_so_far + 1, 0), (record, skipped_so_far, is_bad)

    records = records.scan(tf.constant(0, tf.int32), count)
    return records.filter(lambda record, skipped, is_bad: tf.logical_not(is_bad)).map(
        lambda record, skipped, is_bad: {"serialized": record, "skipped_records": skipped})


class _Augmenter:
    """Per-example geometry: resize to `image_size`, crop to `crop_size`, optional flip, normalise."""

    def __init__(self, image_size, crop_size, training: bool, flip: bool, features: tuple, feature_shapes: dict):
        self.feature_shapes = feature_shapes
        self.image_size = image_size
        self.crop_size = crop_size
        self.training = training
        self.flip = flip and training
        self.features = features

    def decode(self, record) -> dict:
        """A serialized record, or {"serialized", "skipped_records"} (passed through) -> the decoded example."""
        fields = [name for name in self.features if name in schema.OPTIONAL_FIELDS]
        serialized = record["serialized"] if isinstance(record, dict) else record
        parsed = schema.parse_example(serialized, fields=fields)
        example = {key: parsed[key] for key in ("image", "label", *self.features)}
        if isinstance(record, dict):
            example["skipped_records"] = record["skipped_records"]
        for name, shape in self.feature_shapes.items():
            if name in example:
                example[name] = tf.ensure_shape(example[name], shape)
        return example

    def _crop_offset(self, free: int, element_seed, stream: int):
        """Random offset in [0, free] in training (seeded by element_seed and the stream id), else centred."""
        if self.training:
            seed = tf.stack([element_seed, stream])
            return tf.random.stateless_uniform([], seed, minval=0, maxval=free + 1, dtype=tf.int32)
        return free // 2

    def __call__(self, example: dict, element_seed=None) -> dict:
        """Decoded example -> output example; element_seed (int64 scalar) drives the random choices in training."""
        example = dict(example)
        height, width = self.image_size
        stored = tf.shape(example["image"])
        image = tf.cond(
            tf.logical_and(tf.equal(stored[0], height), tf.equal(stored[1], width)),
            lambda: tf.cast(example["image"], tf.float32),
            lambda: tf.image.resize(example["image"], self.image_size, antialias=True),
        )
        image = tf.ensure_shape(image, [height, width, 3])
        landmarks = None
        if "landmarks" in example:
            scale = tf.cast(tf.stack([width / stored[1], height / stored[0]]), tf.float32)
            landmarks = example["landmarks"] * scale

        if self.crop_size is not None:
            crop_h, crop_w = self.crop_size
            top = self._crop_offset(height - crop_h, element_seed, stream=0)
            left = self._crop_offset(width - crop_w, element_seed, stream=1)
            image = image[top:top + crop_h, left:left + crop_w]
            image = tf.ensure_shape(image, [crop_h, crop_w, 3])
            if landmarks is not None:
                landmarks = landmarks - tf.cast(tf.stack([left, top]), tf.float32)
            height, width = crop_h, crop_w

        if self.flip:
            do_flip = tf.random.stateless_uniform([], tf.stack([element_seed, 2])) < 0.5

            def maybe(flipped, value):
                return tf.cond(do_flip, lambda: flipped, lambda: value)

            image = maybe(tf.reverse(image, axis=[1]), image)
            if landmarks is not None:
                landmarks = maybe(flip_landmarks(landmarks, width), landmarks)
            if "pose" in example:
                example["pose"] = maybe(example["pose"] * tf.constant(POSE_FLIP_SIGNS), example["pose"])
            for name in ("depth", "albedo"):
                if name in example:
                    example[name] = maybe(tf.reverse(example[name], axis=[1]), example[name])

        example["image"] = normalize_images(image)
        if landmarks is not None:
            example["landmarks"] = landmarks / tf.constant([width, height], tf.float32)
        return example


def _cache_owner(owner_file: Path):
    """(host, pid) from a cache's owner file, None when it is missing or unreadable."""
    try:
        owner = json.loads(owner_file.read_text())
        return str(owner["host"]), int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _process_is_gone(host: str, pid: int) -> bool:
    """True only for a process of this host that no longer runs."""
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def prepare_cache_file(cache) -> str:
    """The file prefix for `tf.data.Dataset.cache`; its folder is created.

    tf.data writes a cache during the first full pass under a lock file (PREFIX_0.lockfile) and renames it into
    PREFIX.index / PREFIX.data-* at the end. A run killed before that leaves the lock, and every later run fails on
    it. PREFIX.owner (host and pid, written here) says which process writes the cache: the lock of a process of this
    host that is gone is removed with its partial files, so a killed run resumes; a lock held by a live process, by
    another host or by nobody known is a ValueError naming the files.
    """
    path = Path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    if Path(f"{path}.index").is_file():  # a finished cache: read, whatever locks are around
        return str(path)
    owner_file = Path(f"{path}.owner")
    pattern = glob.escape(path.name)
    locks = sorted(path.parent.glob(f"{pattern}_*.lockfile"))
    if locks:
        owner = _cache_owner(owner_file)
        if owner is None or not _process_is_gone(*owner):
            writer = "an unknown process" if owner is None else f"process {owner[1]} on {owner[0]}"
            raise ValueError(
                f"cache {path} is being written by {writer} (lock {locks[0]}): give each run its own cache file, "
                f"or delete {locks[0]} if no run is writing it"
            )
        partial = [name for name in path.parent.glob(f"{pattern}_*") if "tempstate" in name.name]
        for stale in [*locks, *partial]:
            stale.unlink(missing_ok=True)
        print(f"cache {path}: removed the lock and {len(partial)} partial file(s) of process {owner[1]}, which is gone")
    atomic.write_text(owner_file, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return str(path)


def make_dataset(
    data_dir,
    *,
    prefix: str = "train",
    batch_size: int,
    image_size=None,
    training: bool = True,
    flip: bool = True,
    crop_size=None,
    features=(),
    shuffle_buffer: int = 4096,
    repeat: bool | None = None,
    cache=False,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    skip=None,
) -> tf.data.Dataset:
    """Batches of dicts from the shards of `data_dir/<prefix>.json` (written by ShardedTFRecordWriter), or from an
    insightface folder's `<prefix>.rec` / `.idx` / `property` (tfface.data.recordio; images and labels only).

    Each batch: "image" float32 [N, h, w, 3] normalised by `normalize_images`, "label" int32 [N], plus each name in
    `features` (any of EXTRA_FEATURES): "landmarks" float32 [N, M, 2] as (x / w, y / h) of the output image,
    "pose" float32 [N, 3] (yaw, pitch, roll in degrees; yaw and roll negated on flip), "light" float32 [N, L],
    "attributes" float32 [N, A], "true_label" int32 [N], "depth" float32 [N, h', w'], "albedo" float32
    [N, h', w', 3] (canonical maps, mirrored with the image, never resized or cropped), "source_id" string [N].
    Light and attributes are passed through a flip unchanged (their meaning is data-set specific): use flip=False
    where they must stay consistent with the image.

    Args:
      image_size: int or (h, w) the images are resized to; defaults to the stored size of the first image.
      training: shuffle shards and examples, random crop and random horizontal flip (if `flip`); otherwise the
        examples come in written order with a centre crop.
      crop_size: int or (h, w) crop taken from the resized image; output size is crop_size (else image_size).
      repeat, drop_remainder: default to `training`.
      cache: True caches decoded images in memory, a str caches them in that file (see `prepare_cache_file`).
      seed: makes shuffling and augmentation reproducible.
      skip: a `verify.Scan` (a `recordio.Scan` for an insightface folder) of the data set: its bad records are left out, and every example holds
        "skipped_records" int32, the bad records left out just before it (summed over an epoch: the skipped count).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    insightface = recordio.InsightfaceFolder(data_dir, prefix) if recordio.is_insightface_folder(data_dir, prefix) \
        else None
    description = insightface.description() if insightface is not None else read_description(data_dir, prefix)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(shuffle_buffer, (int, np.integer)) or shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be an int >= 1, got {shuffle_buffer!r}")
    if description["num_examples"] == 0:
        raise ValueError(f"data set {prefix!r} in {data_dir} has no examples")
    features = _check_features(features, description, data_dir, prefix)
    image_size = _size_pair("image_size", image_size) or tuple(description["image_size"])
    crop_size = _size_pair("crop_size", crop_size)
    if crop_size is not None and (crop_size[0] > image_size[0] or crop_size[1] > image_size[1]):
        raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")
    if training and flip and "landmarks" in features:
        num_points = description["num_landmarks"]
        if num_points not in LANDMARK_FLIP_PERMUTATIONS:
            raise ValueError(
                f"cannot flip {num_points} landmarks of data set {prefix!r} in {data_dir}: known layouts are "
                f"{sorted(LANDMARK_FLIP_PERMUTATIONS)} points; pass flip=False"
            )
    files = [str(data_dir / name) for name in description["shards"]]
    missing = [path for path in files if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"shards listed in {data_dir / (prefix + '.json')} are missing: {missing}")
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder

    augment = _Augmenter(image_size, crop_size, training, flip, features, description.get("feature_shapes", {}))
    decode = augment.decode
    if insightface is not None:
        dataset, decode = recordio.encoded_examples(insightface, training, seed, skip), recordio.decode
    elif skip is None:
        dataset = _read_records(files, training, seed)
    else:
        dataset = _read_good_records(files, skip, training, seed)
    dataset = dataset.apply(
        tf.data.experimental.assert_cardinality(description["num_examples"] if skip is None else skip.good)
    )
    if cache:
        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.cache("" if cache is True else prepare_cache_file(cache))
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def prepare(record, element_seed=None):
        return augment(record if cache else decode(record), element_seed)

    if training:
        seeds = tf.data.Dataset.random(seed=seed)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = not training or seed is not None
    return dataset.with_options(options)
