"""Batched bilinear sampling of images at sub-pixel coordinates, differentiable w.r.t. values and coordinates."""
import keras
from keras import ops


def bilinear_sample(images, coordinates):
    """images [N, H, W, C], coordinates [N, Ho, Wo, 2] pixel (u, v) = (column, row) -> [N, Ho, Wo, C].

    Linear interpolation with `keras.ops.image.map_coordinates(order=1)`, one channel at a time; coordinates outside
    the image read the nearest border pixel. The batch is stacked into one tall image (each image padded by a copy of
    its last row and column, so no sample blends two images) and the row coordinates offset by the image index; the
    offset coordinates are float64 so that they keep their sub-pixel precision in large batches.
    """
    images = ops.convert_to_tensor(images)
    if len(images.shape) != 4:
        raise ValueError(f"images must have shape [N, H, W, C], got {tuple(images.shape)}")
    coordinates = ops.convert_to_tensor(coordinates)
    if len(coordinates.shape) != 4 or coordinates.shape[-1] != 2:
        raise ValueError(f"coordinates must have shape [N, Ho, Wo, 2], got {tuple(coordinates.shape)}")
    if not keras.backend.is_float_dtype(images.dtype):
        images = ops.cast(images, keras.config.floatx())
    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]

    padded = ops.pad(images, [[0, 0], [0, 1], [0, 1], [0, 0]], mode="symmetric")
    stacked = ops.reshape(padded, (-1, width + 1, channels))
    coordinates = ops.cast(coordinates, "float64")
    image_offset = ops.reshape(ops.cast(ops.arange(batch), "float64") * (height + 1), (-1, 1, 1))
    rows = ops.clip(coordinates[..., 1], 0.0, height - 1.0) + image_offset
    columns = ops.clip(coordinates[..., 0], 0.0, width - 1.0)
    row_column = ops.stack([rows, columns])
    return ops.stack(
        [
            ops.image.map_coordinates(stacked[..., channel], row_column, order=1, fill_mode="nearest")
            for channel in range(channels)
        ],
        axis=-1,
    )
