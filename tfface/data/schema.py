"""The tfface TFRecord schema: one `tf.train.Example` per face image.

Features (key: type, meaning):

- ``image/encoded``: bytes. The encoded image (PNG or JPEG), always 3 channels when written from pixels
  (grey images are stored as 3 equal channels).
- ``image/format``: bytes, ``b"png"`` or ``b"jpeg"``.
- ``image/height``, ``image/width``: int64, pixel size of the stored image.
- ``label``: int64 >= 0, the training identity label.
- ``true_label``: int64, the clean identity label when label noise was injected (equal to ``label`` otherwise).
- ``landmarks``: float list of length 2M, ``x0, y0, x1, y1, ...`` in pixels of the stored image. Pixel coordinates are
  continuous: pixel column i covers [i, i + 1), so the image spans [0, width] x [0, height].
- ``pose``: float list of length 3, (yaw, pitch, roll) in degrees.
- ``light``: float list of free length L, data-set specific light parameters (SynthFaces: k_a, k_d, l_x, l_y, l_z;
  Yale B: azimuth, elevation in degrees).
- ``attributes``: float list of length A, data-set specific attributes.
- ``source_id``: bytes (UTF-8), the original file path or the synthetic id; may be empty.
- ``depth``: bytes, ``tf.io.serialize_tensor`` of a float16 [h, w] canonical depth map in [0, 1].
- ``albedo``: bytes, ``tf.io.serialize_tensor`` of a float16 [h, w, 3] canonical albedo map in [0, 1].
- ``has/<field>``: int64 0 or 1 for every optional field (``true_label``, ``landmarks``, ``pose``, ``light``,
  ``attributes``, ``depth``, ``albedo``), so a reader tells a missing field from one that holds zeros.
"""
import io

import numpy as np
import tensorflow as tf
from PIL import Image

from tfface.data.image_io import UnreadableImageError, open_image

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
LABEL = "label"
TRUE_LABEL = "true_label"
LANDMARKS = "landmarks"
POSE = "pose"
LIGHT = "light"
ATTRIBUTES = "attributes"
SOURCE_ID = "source_id"
DEPTH = "depth"
ALBEDO = "albedo"

OPTIONAL_FIELDS = (TRUE_LABEL, LANDMARKS, POSE, LIGHT, ATTRIBUTES, DEPTH, ALBEDO)
FLOAT_LIST_FIELDS = (LANDMARKS, POSE, LIGHT, ATTRIBUTES)
MAP_FIELDS = (DEPTH, ALBEDO)
IMAGE_FORMATS = ("png", "jpeg")

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
_JPEG_QUALITY = 95


def presence_key(field: str) -> str:
    """The int64 feature key that says whether optional `field` is stored."""
    return f"has/{field}"


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _floats(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values.reshape(-1).tolist()))


def _check_format(image_format: str) -> str:
    fmt = "jpeg" if image_format == "jpg" else image_format
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return fmt


def _check_label(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _float_array(name: str, value, shape: tuple) -> np.ndarray:
    """`value` as float32, checked against `shape` (None = any size >= 1 on that axis) and finiteness."""
    array = np.asarray(value, dtype=np.float32)
    rank_ok = array.ndim == len(shape)
    if not rank_ok or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        wanted = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {wanted}, got {list(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _unit_map(name: str, value, shape: tuple) -> bytes:
    """A canonical map in [0, 1] serialised as a float16 tensor."""
    array = _float_array(name, value, shape)
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1], got [{array.min()}, {array.max()}]")
    return tf.io.serialize_tensor(tf.constant(array.astype(np.float16))).numpy()


def _encode_pixels(image: np.ndarray, fmt: str) -> tuple[bytes, int, int]:
    """uint8 [H, W], [H, W, 1] or [H, W, 3] -> (encoded 3-channel bytes, H, W)."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape [H, W], [H, W, 1] or [H, W, 3], got {list(image.shape)}")
    buffer = io.BytesIO()
    options = {"quality": _JPEG_QUALITY} if fmt == "jpeg" else {}
    Image.fromarray(image, mode="RGB").save(buffer, format=_PIL_FORMATS[fmt], **options)
    return buffer.getvalue(), image.shape[0], image.shape[1]


def _inspect_encoded(data: bytes, fmt: str) -> tuple[int, int]:
    """(H, W) read from the header of encoded `data`, checked to be of format `fmt`."""
    try:
        with open_image(io.BytesIO(data), "image bytes") as opened:
            found, (width, height) = opened.format, opened.size
    except UnreadableImageError as error:
        raise ValueError(f"image bytes are not a readable image: {error.reason}") from None
    if found != _PIL_FORMATS[fmt]:
        raise ValueError(f"image bytes are {found}, but image_format is {fmt!r}")
    return height, width


def make_example(
    image,
    label: int,
    *,
    true_label: int | None = None,
    landmarks=None,
    pose=None,
    light=None,
    attributes=None,
    source_id: str = "",
    depth=None,
    albedo=None,
    image_format: str = "png",
) -> tf.train.Example:
    """One face as a `tf.train.Example` (see the module docstring for the stored features).

    Args:
      image: uint8 pixels [H, W, 3] or grey [H, W] (stored as 3 channels), or already-encoded bytes of
        `image_format`, stored as they are.
      label: identity label, int >= 0.
      true_label: the clean label when label noise was injected; defaults to `label` (and is then marked absent).
      landmarks: float [M, 2], pixel (x, y) in the stored image.
      pose: float [3], (yaw, pitch, roll) in degrees.
      light: float [L], data-set specific light parameters.
      attributes: float [A].
      source_id: original file path or synthetic id.
      depth: float [h, w] canonical depth in [0, 1]. albedo: float [h, w, 3] canonical albedo in [0, 1].
      image_format: "png" or "jpeg" ("jpg" accepted).
    """
    fmt = _check_format(image_format)
    label = _check_label("label", label)
    if isinstance(image, (bytes, bytearray)):
        encoded = bytes(image)
        height, width = _inspect_encoded(encoded, fmt)
    else:
        encoded, height, width = _encode_pixels(np.asarray(image), fmt)
    if not isinstance(source_id, str):
        raise ValueError(f"source_id must be a str, got {type(source_id).__name__}")

    feature = {
        IMAGE_ENCODED: _bytes(encoded),
        IMAGE_FORMAT: _bytes(fmt.encode()),
        IMAGE_HEIGHT: _int64(height),
        IMAGE_WIDTH: _int64(width),
        LABEL: _int64(label),
        TRUE_LABEL: _int64(label if true_label is None else _check_label("true_label", true_label)),
        SOURCE_ID: _bytes(source_id.encode("utf-8")),
    }
    optional = {
        TRUE_LABEL: None if true_label is None else feature[TRUE_LABEL],
        LANDMARKS: None if landmarks is None else _floats(_float_array("landmarks", landmarks, (None, 2))),
        POSE: None if pose is None else _floats(_float_array("pose", pose, (3,))),
        LIGHT: None if light is None else _floats(_float_array("light", light, (None,))),
        ATTRIBUTES: None if attributes is None else _floats(_float_array("attributes", attributes, (None,))),
        DEPTH: None if depth is None else _bytes(_unit_map("depth", depth, (None, None))),
        ALBEDO: None if albedo is None else _bytes(_unit_map("albedo", albedo, (None, None, 3))),
    }
    for field, value in optional.items():
        if value is not None:
            feature[field] = value
        feature[presence_key(field)] = _int64(value is not None)
    return tf.train.Example(features=tf.train.Features(feature=feature))


def feature_spec(fields=OPTIONAL_FIELDS) -> dict:
    """The `tf.io.parse_single_example` spec for the image, labels, source id and the optional `fields`."""
    unknown = sorted(set(fields) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"unknown schema fields {unknown}; known: {list(OPTIONAL_FIELDS)}")
    spec = {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        TRUE_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    for field in fields:
        spec[presence_key(field)] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        if field in FLOAT_LIST_FIELDS:
            spec[field] = tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)
        elif field in MAP_FIELDS:
            spec[field] = tf.io.FixedLenFeature([], tf.string, default_value="")
    return spec


def _parse_map(serialized_map: tf.Tensor, present: tf.Tensor, rank: int) -> tf.Tensor:
    """A float16 serialised map -> float32 tensor of `rank` (all dims 0 except the channel when absent)."""
    empty_shape = [0, 0] if rank == 2 else [0, 0, 3]
    static_shape = [None, None] if rank == 2 else [None, None, 3]
    value = tf.cond(
        present,
        lambda: tf.ensure_shape(tf.io.parse_tensor(serialized_map, tf.float16), static_shape),
        lambda: tf.zeros(empty_shape, tf.float16),
    )
    return tf.cast(value, tf.float32)


def parse_example(serialized, fields=OPTIONAL_FIELDS) -> dict:
    """Parse one serialized Example (works eagerly and inside `tf.data`).

    Returns a dict of tensors: "image" uint8 [H, W, 3], "image_format" string, "label" int32, "source_id" string,
    and for each optional field in `fields` (default: all) its value plus "has_<field>" bool:
    "true_label" int32 (= label when absent), "landmarks" float32 [M, 2], "pose" float32 [3], "light" float32 [L],
    "attributes" float32 [A], "depth" float32 [h, w], "albedo" float32 [h, w, 3]. Absent fields are empty
    (0 on their free axes; pose [0]).
    """
    fields = tuple(fields)
    parsed = tf.io.parse_single_example(serialized, feature_spec(fields))
    label = tf.cast(parsed[LABEL], tf.int32)
    result = {
        "image": tf.io.decode_image(parsed[IMAGE_ENCODED], channels=3, expand_animations=False),
        "image_format": parsed[IMAGE_FORMAT],
        "label": label,
        "source_id": parsed[SOURCE_ID],
    }
    for field in fields:
        present = parsed[presence_key(field)] > 0
        result[f"has_{field}"] = present
        if field == TRUE_LABEL:
            result[field] = tf.where(present, tf.cast(parsed[TRUE_LABEL], tf.int32), label)
        elif field == LANDMARKS:
            result[field] = tf.reshape(parsed[LANDMARKS], [-1, 2])
        elif field in FLOAT_LIST_FIELDS:
            result[field] = parsed[field]
        else:
            result[field] = _parse_map(parsed[field], present, rank=2 if field == DEPTH else 3)
    return result
