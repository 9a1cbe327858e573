"""Euler angles to rotation matrices, in the camera frame (x right, y down, z forward into the scene).

Order: R = Rz(roll) @ Ry(yaw) @ Rx(pitch), i.e. a point is rotated first about x (pitch), then about y (yaw), then
about z (roll), as in Unsup3D (Wu et al. 2020), whose renderer 3D-BERL follows. With the object in front of the
camera and rotated about a centre behind its surface (see `viewpoint.py`):
- positive pitch tilts the face down (the nose tip moves to +y, down the image),
- positive yaw turns the face toward the image's left (the nose tip moves to -x),
- positive roll turns the image content clockwise on screen (a point at +x moves to +y).
"""
import keras
from keras import ops


def _axis_rotation(cos, sin, axis):
    """[N] cos, sin -> [N, 3, 3] right-handed rotation about the camera axis 0 (x), 1 (y) or 2 (z)."""
    one = ops.ones_like(cos)
    zero = ops.zeros_like(cos)
    if axis == 0:
        rows = [[one, zero, zero], [zero, cos, -sin], [zero, sin, cos]]
    elif axis == 1:
        rows = [[cos, zero, sin], [zero, one, zero], [-sin, zero, cos]]
    else:
        rows = [[cos, -sin, zero], [sin, cos, zero], [zero, zero, one]]
    return ops.stack([ops.stack(row, axis=-1) for row in rows], axis=-2)


def euler_to_matrix(angles):
    """angles [N, 3] in radians (pitch about x, yaw about y, roll about z) -> [N, 3, 3] Rz(roll) Ry(yaw) Rx(pitch)."""
    angles = ops.convert_to_tensor(angles)
    if len(angles.shape) != 2 or angles.shape[-1] != 3:
        raise ValueError(f"angles must have shape [N, 3] (pitch, yaw, roll), got {tuple(angles.shape)}")
    if not keras.backend.is_float_dtype(angles.dtype):
        angles = ops.cast(angles, keras.config.floatx())
    cos, sin = ops.cos(angles), ops.sin(angles)
    rx = _axis_rotation(cos[:, 0], sin[:, 0], axis=0)
    ry = _axis_rotation(cos[:, 1], sin[:, 1], axis=1)
    rz = _axis_rotation(cos[:, 2], sin[:, 2], axis=2)
    return ops.matmul(rz, ops.matmul(ry, rx))
