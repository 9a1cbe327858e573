"""The rigid viewpoint change of 3D-BERL Eq. 2: rotate the canonical object about a centre on the optical axis, then
translate it.

view(X) = R (X - c) + c + t with c = (0, 0, rotation_center_depth), R = euler_to_matrix(angles) (see `rotation.py`),
t the translation (metres). Unsup3D rotates about (0, 0, 1): the canonical face sits about 1 m from the camera.
"""
from keras import ops

from tfface.rendering.rotation import euler_to_matrix


def _center(rotation_center_depth, dtype):
    return ops.convert_to_tensor([0.0, 0.0, rotation_center_depth], dtype=dtype)


def _broadcast_over_points(matrix_or_vector, points):
    """[N, ...] per-sample tensor -> reshaped so it broadcasts against points [N, ..., 3]."""
    extra_axes = len(points.shape) - 2
    return ops.reshape(matrix_or_vector, (-1,) + (1,) * extra_axes + tuple(matrix_or_vector.shape[1:]))


def to_view(points, angles, translation, rotation_center_depth=1.0):
    """points [N, ..., 3] canonical camera space -> [N, ..., 3] R (X - c) + c + t. angles [N, 3] rad, translation [N, 3]."""
    points = ops.convert_to_tensor(points)
    rotation = _broadcast_over_points(euler_to_matrix(ops.cast(angles, points.dtype)), points)
    translation = _broadcast_over_points(ops.cast(translation, points.dtype), points)
    center = _center(rotation_center_depth, points.dtype)
    return ops.einsum("...ij,...j->...i", rotation, points - center) + center + translation


def to_canonical(points, angles, translation, rotation_center_depth=1.0):
    """Inverse of `to_view`: points [N, ..., 3] in the view -> [N, ..., 3] R^T (X - c - t) + c."""
    points = ops.convert_to_tensor(points)
    rotation = _broadcast_over_points(euler_to_matrix(ops.cast(angles, points.dtype)), points)
    translation = _broadcast_over_points(ops.cast(translation, points.dtype), points)
    center = _center(rotation_center_depth, points.dtype)
    return ops.einsum("...ji,...j->...i", rotation, points - center - translation) + center
