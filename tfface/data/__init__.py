"""Face data: the TFRecord schema, the sharded writer, the tf.data reader, insightface RecordIO folders
(tfface.data.recordio) and image-folder scanning.

The public names below load their module (and TensorFlow) on first use, so TensorFlow-free parts such as
`tfface.data.folder` import quickly, e.g. for command-line input checks.
"""
import importlib

_EXPORTS = {
    "EXTRA_FEATURES": "tfface.data.pipeline",
    "LANDMARK_FLIP_PERMUTATIONS": "tfface.data.pipeline",
    "denormalize_images": "tfface.data.pipeline",
    "flip_landmarks": "tfface.data.pipeline",
    "make_dataset": "tfface.data.pipeline",
    "normalize_images": "tfface.data.pipeline",
    "make_example": "tfface.data.schema",
    "parse_example": "tfface.data.schema",
    "ShardedTFRecordWriter": "tfface.data.writer",
    "read_description": "tfface.data.writer",
    "scan_image_folder": "tfface.data.folder",
    "read_annotation_csv": "tfface.data.folder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tfface.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
