"""Pinhole camera: intrinsics from a field of view, pixel grids, unprojection of depth maps and projection of points.

Conventions: camera frame x right, y down, z forward (depth, metres); pixel (u, v) = (column, row), so pixel
coordinates are (x, y) in image order, with (0, 0) the centre of the top-left pixel.
"""
import math

import keras
from keras import ops


def intrinsics_from_fov(fov_degrees=10.0, height=64, width=64, dtype="float32"):
    """K [3, 3] of 3D-BERL Eq. 3: f = (W - 1) / (2 tan(fov / 2)) for both axes (square pixels), centre ((W-1)/2, (H-1)/2).

    fov_degrees is the horizontal field of view. The default, 10 degrees, with the face about 1 m away, is 3D-BERL's.
    """
    if not 0.0 < fov_degrees < 180.0:
        raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
    if height < 2 or width < 2:
        raise ValueError(f"height and width must be >= 2, got height={height}, width={width}")
    focal = (width - 1) / (2.0 * math.tan(math.radians(fov_degrees) / 2.0))
    return ops.convert_to_tensor(
        [[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=dtype
    )


def _check_intrinsics(K, dtype):
    K = ops.cast(ops.convert_to_tensor(K), dtype)
    if tuple(K.shape) != (3, 3):
        raise ValueError(f"K must have shape [3, 3], got {tuple(K.shape)}")
    return K


def pixel_grid(height, width, dtype="float32"):
    """[H, W, 2] pixel coordinates (u, v) = (column, row) of every pixel centre."""
    rows, columns = ops.meshgrid(ops.arange(height, dtype=dtype), ops.arange(width, dtype=dtype), indexing="ij")
    return ops.stack([columns, rows], axis=-1)


def rays(pixels, K):
    """pixels [..., 2] (u, v) -> [..., 3] K^-1 (u, v, 1): the ray through each pixel, scaled to depth z = 1."""
    pixels = ops.convert_to_tensor(pixels)
    K = _check_intrinsics(K, pixels.dtype)
    homogeneous = ops.concatenate([pixels, ops.ones_like(pixels[..., :1])], axis=-1)
    return ops.matmul(homogeneous, ops.transpose(ops.inv(K)))


def unproject(depth, K):
    """depth [N, H, W] (z, metres) -> [N, H, W, 3] camera-space points z K^-1 (u, v, 1) of every pixel."""
    depth = ops.convert_to_tensor(depth)
    if len(depth.shape) != 3:
        raise ValueError(f"depth must have shape [N, H, W], got {tuple(depth.shape)}")
    if not keras.backend.is_float_dtype(depth.dtype):
        depth = ops.cast(depth, keras.config.floatx())
    height, width = depth.shape[1], depth.shape[2]
    return rays(pixel_grid(height, width, depth.dtype), K)[None] * depth[..., None]


def project(points, K):
    """points [N, ..., 3] camera-space (z > 0) -> [N, ..., 2] pixel coordinates (u, v) of K X / (K X)_z."""
    points = ops.convert_to_tensor(points)
    if points.shape[-1] != 3:
        raise ValueError(f"points must have a last axis of 3 (x, y, z), got shape {tuple(points.shape)}")
    K = _check_intrinsics(K, points.dtype)
    image_points = ops.matmul(points, ops.transpose(K))
    return image_points[..., :2] / image_points[..., 2:3]
