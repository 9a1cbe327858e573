"""Face data: the TFRecord schema, the sharded writer, the tf.data reader and image-folder scanning."""
from tfface.data.pipeline import (
    EXTRA_FEATURES,
    LANDMARK_FLIP_PERMUTATIONS,
    denormalize_images,
    flip_landmarks,
    make_dataset,
    normalize_images,
)
from tfface.data.schema import make_example, parse_example
from tfface.data.writer import ShardedTFRecordWriter, read_description

__all__ = [
    "EXTRA_FEATURES",
    "LANDMARK_FLIP_PERMUTATIONS",
    "ShardedTFRecordWriter",
    "denormalize_images",
    "flip_landmarks",
    "make_dataset",
    "make_example",
    "normalize_images",
    "parse_example",
    "read_description",
]
