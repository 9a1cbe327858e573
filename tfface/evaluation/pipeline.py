"""The evaluation input pipeline: a benchmark's distinct images decoded, resized, batched and mirrored by tf.data,
in parallel and ahead of the model, so the model never waits on a decoder and no image goes through a file twice.

    for images, mirrored in image_batches(paths, (112, 112), batch_size=64, mirror=True):
        ...  # uint8 tf.Tensor [n, 112, 112, 3] each; mirrored is images flipped left-right

Pixels equal `tfface.evaluation.load_images`'s: TF's decoders (JPEG with the accurate integer DCT, as PIL uses),
and an image not already at the input size resized by PIL's bilinear filter. A file TF cannot decode is read again
with `load_images`, whose error names it.
"""
from typing import List, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from PIL import Image

from tfface.evaluation.readers import load_images

PREFETCH_BATCHES = 2


def pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [height, width, 3] with PIL's bilinear filter (load_images' resize)."""
    return np.asarray(Image.fromarray(image).resize((int(width), int(height)), Image.BILINEAR), dtype=np.uint8)


def decode_file(path, image_size: Tuple[int, int]):
    """A scalar string path -> uint8 RGB [H, W, 3] at image_size (height, width)."""
    contents = tf.io.read_file(path)
    image = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )
    height, width = image_size
    image = tf.cond(
        tf.reduce_all(tf.shape(image)[:2] == image_size),
        lambda: image,
        lambda: tf.numpy_function(pil_resize, [image, height, width], tf.uint8, stateful=False),
    )
    return tf.ensure_shape(image, (height, width, 3))


def image_batches(source: Union[Sequence[str], np.ndarray], image_size: Tuple[int, int], batch_size: int,
                  mirror: bool) -> tf.data.Dataset:
    """Batches of `source` (image file paths, or uint8 images [N, H, W, 3] already at image_size) in order:
    uint8 [n, H, W, 3], or (images, mirrored images) with `mirror`; decoded in parallel, PREFETCH_BATCHES ahead."""
    if isinstance(source, np.ndarray):
        dataset = tf.data.Dataset.from_tensor_slices(source)
    else:
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(source), tf.string)).map(
            lambda path: decode_file(path, tuple(image_size)), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
    dataset = dataset.batch(batch_size)
    if mirror:
        dataset = dataset.map(lambda images: (images, tf.reverse(images, axis=[2])))
    return dataset.prefetch(PREFETCH_BATCHES)


def named_decode_error(paths: List[str], image_size: Tuple[int, int], error: tf.errors.OpError) -> ValueError:
    """The error to raise when TF failed to decode one of `paths`: load_images' own error naming the file, else
    TF's message."""
    try:
        load_images(paths, image_size)
    except (ValueError, FileNotFoundError) as named:
        return named
    return ValueError(f"cannot decode one of {len(paths)} images ({paths[0]} ...): {error.message.splitlines()[0]}")
