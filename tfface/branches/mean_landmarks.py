"""APRN's target l_mean: the mean landmarks of the frontal training faces, and its JSON file.

Landmarks are (x / w, y / h) of the network input image, [M, 2] (M = 5 or 68, the layouts of tfface.data.landmarks).
A face is frontal when |yaw| <= max_yaw degrees; yaw comes from the data's `pose` feature, or, without poses, from
the left/right symmetry of the landmarks (`symmetry_yaw`).
"""
import json
import os
from pathlib import Path

import numpy as np

from tfface import atomic
from tfface.data.landmarks import GENERIC_FACE_5_POINTS_MM, five_from_68

# The generic face: half the distance between the eye centres and the depth of the nose tip in front of them (mm).
_HALF_EYE_DISTANCE_MM = GENERIC_FACE_5_POINTS_MM[1, 0]
_NOSE_DEPTH_MM = GENERIC_FACE_5_POINTS_MM[2, 2] - GENERIC_FACE_5_POINTS_MM[0, 2]


def _five_points(landmarks) -> np.ndarray:
    points = np.asarray(landmarks, np.float64)
    if points.ndim < 2 or points.shape[-1] != 2 or points.shape[-2] not in (5, 68):
        raise ValueError(f"landmarks must be [..., 5, 2] or [..., 68, 2], got {list(points.shape)}")
    return five_from_68(points) if points.shape[-2] == 68 else points


def symmetry_yaw(landmarks, aspect: float = 1.0) -> np.ndarray:
    """Yaw in degrees from how far the nose tip sits off the eyes' mid-point: [..., M, 2] -> [...].

    A frontal face has its nose tip on the symmetry axis, half-way between the eye centres. Turning the generic
    face of tfface.data.landmarks by yaw (weak perspective) moves the eyes to +-e cos(yaw) and the nose tip, d in
    front of them, to d sin(yaw) along the eye axis, so yaw = atan(e offset / (d * half eye distance)), with
    `offset` the nose tip's shift from the eyes' mid-point measured along the eye axis (which removes roll);
    yaw > 0 when the nose tip is on the right eye's side (tfface.data.landmarks' sign).
    aspect: image width / height when the landmarks are normalised coordinates (x / w, y / h), else 1.
    """
    points = _five_points(landmarks) * np.array([aspect, 1.0])
    left_eye, right_eye, nose = points[..., 0, :], points[..., 1, :], points[..., 2, :]
    eye_axis = right_eye - left_eye
    half_eye_distance = np.linalg.norm(eye_axis, axis=-1) / 2.0
    if np.any(half_eye_distance <= 0):
        raise ValueError("landmarks: the two eye centres coincide, the yaw is undefined")
    offset = np.sum((nose - (left_eye + right_eye) / 2.0) * eye_axis, axis=-1) / (2.0 * half_eye_distance)
    return np.degrees(np.arctan(_HALF_EYE_DISTANCE_MM * offset / (_NOSE_DEPTH_MM * half_eye_distance)))


def frontal_mean_landmarks(landmarks, yaw, max_yaw: float) -> np.ndarray:
    """Mean of landmarks [N, M, 2] over the faces with |yaw [N]| <= max_yaw (degrees) -> [M, 2] float64."""
    landmarks = np.asarray(landmarks, np.float64)
    yaw = np.asarray(yaw, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be [N, M, 2], got {list(landmarks.shape)}")
    if yaw.shape != landmarks.shape[:1]:
        raise ValueError(f"yaw must be [{landmarks.shape[0]}] (one per face), got {list(yaw.shape)}")
    if max_yaw < 0:
        raise ValueError(f"max_yaw must be >= 0 degrees, got {max_yaw}")
    frontal = np.abs(yaw) <= max_yaw
    if not np.any(frontal):
        raise ValueError(
            f"no frontal face: none of the {len(yaw)} faces has |yaw| <= {max_yaw} degrees "
            f"(smallest |yaw| {np.abs(yaw).min():.1f}); raise max_yaw"
        )
    return landmarks[frontal].mean(axis=0)


def save_mean_landmarks(path, mean_landmarks, **metadata) -> None:
    """Writes {"mean_landmarks": [[x, y], ...], **metadata} as JSON, atomically (folders created)."""
    atomic.write_json(path, {"mean_landmarks": np.asarray(mean_landmarks, np.float64).tolist(), **metadata})


def load_mean_landmarks(path) -> np.ndarray:
    """The [M, 2] float32 array saved by `save_mean_landmarks`; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mean_landmarks: file not found: {path} "
                                f"(write it with python -m experiments.aprn.mean_landmarks)")
    try:
        record = json.loads(Path(path).read_text())
        values = np.asarray(record["mean_landmarks"], np.float32)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"mean_landmarks: {path} is not a mean-landmarks JSON file ({error!r})") from None
    return check_mean_landmarks(values, str(path))


def check_mean_landmarks(values, source: str) -> np.ndarray:
    """values as float32 [M, 2], finite; `source` names where they came from in the error."""
    array = np.asarray(values, np.float32)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 1:
        raise ValueError(f"mean_landmarks from {source} must be [M, 2], got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"mean_landmarks from {source} must be finite")
    return array

