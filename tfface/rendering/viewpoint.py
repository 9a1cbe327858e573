"""The rigid viewpoint change of 3D-BERL Eq. 2: rotate the canonical object about a centre on the optical axis, then
translate it.

view(X) = R (X - c) + c + t with c = (0, 0, rotation_center_depth), R = euler_to_matrix(angles) (see `rotation.py`),
t the translation (metres). Unsup3D rotates about (0, 0, 1): the canonical face sits about 1 m from the camera.
"""
from keras import ops

from tfface.rendering.rotation import euler_to_matrix


def _center(rotation_center_depth, dtype):
    return ops.convert_to_tensor([0.0, 0.0, rotation_center_depth], dtype=dtype)


def _rotate(points, rotation):
    """points [N, ..., 3], rotation [N, 3, 3] -> [N, ..., 3] rotation @ point for every point."""
    flat = ops.reshape(points, (ops.shape(points)[0], -1, 3))
    return ops.reshape(ops.matmul(flat, ops.transpose(rotation, (0, 2, 1))), ops.shape(points))


def _per_sample(vector, points):
    """[N, 3] -> reshaped to broadcast against points [N, ..., 3]."""
    return ops.reshape(ops.cast(vector, points.dtype), (-1,) + (1,) * (len(points.shape) - 2) + (3,))


def to_view(points, angles, translation, rotation_center_depth=1.0):
    """points [N, ..., 3] canonical camera space -> [N, ..., 3] R (X - c) + c + t. angles [N, 3] rad, translation [N, 3]."""
    points = ops.convert_to_tensor(points)
    rotation = euler_to_matrix(ops.cast(angles, points.dtype))
    center = _center(rotation_center_depth, points.dtype)
    return _rotate(points - center, rotation) + center + _per_sample(translation, points)


def to_canonical(points, angles, translation, rotation_center_depth=1.0):
    """Inverse of `to_view`: points [N, ..., 3] in the view -> [N, ..., 3] R^T (X - c - t) + c."""
    points = ops.convert_to_tensor(points)
    rotation = euler_to_matrix(ops.cast(angles, points.dtype))
    center = _center(rotation_center_depth, points.dtype)
    return _rotate(points - center - _per_sample(translation, points), ops.transpose(rotation, (0, 2, 1))) + center
