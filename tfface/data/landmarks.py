"""Facial landmark geometry: iBUG 68 -> 5 points, normalised mean error, and head pose from 5 points.

Five-point order (as MTCNN, the ArcFace template and `pipeline.LANDMARK_FLIP_PERMUTATIONS` use it): left eye
centre, right eye centre, nose tip, left mouth corner, right mouth corner, where "left" is the image's left (the
subject's right). Coordinates are pixels, x right, y down.

Head pose (yaw, pitch, roll) in degrees, zero for a face looking straight at the camera:
- yaw > 0: the face turns towards the image's right (the nose tip moves right; the subject looks to their left);
- pitch > 0: the face tilts up (the nose tip moves up);
- roll > 0: the face rotates clockwise on screen (the right eye is lower than the left eye).
In 3-D (x right, y down, z from the face towards the camera) the head rotation is
R = Rz(roll) Ry(yaw) Rx(pitch) with the standard right-hand-rule matrices of each axis, and a model point X
projects to the image (weak perspective) as s (R X)[:2] + t. Mirroring an image negates yaw and roll.
"""
from dataclasses import dataclass

import numpy as np

FIVE_POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# iBUG 68 (0-based): jaw 0-16, brows 17-26, nose 27-35 (tip 30), eyes 36-41 and 42-47, mouth 48-67.
IBUG68_LEFT_EYE = tuple(range(36, 42))
IBUG68_RIGHT_EYE = tuple(range(42, 48))
IBUG68_NOSE_TIP = 30
IBUG68_MOUTH_LEFT = 48
IBUG68_MOUTH_RIGHT = 54
IBUG68_LEFT_EYE_OUTER = 36
IBUG68_RIGHT_EYE_OUTER = 45

# A generic face, millimetres, in the frame above (x right, y down, z towards the camera), frontal. The x, y of the
# points are the ArcFace template made left-right symmetric and scaled to a 63 mm distance between the eye
# centres; depths are those of a mean adult 3-D face: the nose tip 35 mm in front of the eye centres, the mouth
# corners 2 mm behind them.
GENERIC_FACE_5_POINTS_MM = np.array(
    [
        [-31.5, 0.0, 0.0],
        [31.5, 0.0, 0.0],
        [0.0, 36.0, 35.0],
        [-26.1, 72.7, -2.0],
        [26.1, 72.7, -2.0],
    ]
)

_GRID_DEG = np.arange(-90.0, 90.1, 5.0)  # the yaw and pitch grid searched before refining
_MAX_ITERATIONS = 100
_JACOBIAN_STEP = 1e-6


def _landmark_array(name: str, landmarks, num_points: int) -> np.ndarray:
    array = np.asarray(landmarks, np.float64)
    if array.ndim < 2 or array.shape[-2:] != (num_points, 2):
        raise ValueError(f"{name} must be [..., {num_points}, 2], got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def five_from_68(landmarks) -> np.ndarray:
    """iBUG 68 points [..., 68, 2] -> the 5 points [..., 5, 2]: eye centres (mean of the 6 eye-contour points),
    nose tip (30), mouth corners (48, 54)."""
    points = _landmark_array("landmarks", landmarks, 68)
    return np.stack(
        [
            points[..., IBUG68_LEFT_EYE, :].mean(axis=-2),
            points[..., IBUG68_RIGHT_EYE, :].mean(axis=-2),
            points[..., IBUG68_NOSE_TIP, :],
            points[..., IBUG68_MOUTH_LEFT, :],
            points[..., IBUG68_MOUTH_RIGHT, :],
        ],
        axis=-2,
    )


def interocular_distance(landmarks) -> np.ndarray:
    """The 300-W normaliser: distance between the outer eye corners (36, 45) of 68 points [..., 68, 2] -> [...]."""
    points = _landmark_array("landmarks", landmarks, 68)
    return np.linalg.norm(points[..., IBUG68_RIGHT_EYE_OUTER, :] - points[..., IBUG68_LEFT_EYE_OUTER, :], axis=-1)


def eye_centre_distance(landmarks) -> np.ndarray:
    """Distance between the two eye centres of 5 points [..., 5, 2] -> [...]."""
    points = _landmark_array("landmarks", landmarks, 5)
    return np.linalg.norm(points[..., 1, :] - points[..., 0, :], axis=-1)


def normalised_mean_error(predicted, target, normaliser) -> np.ndarray:
    """Per image: mean over the K points of the Euclidean error, divided by `normaliser`.

    predicted, target: [N, K, 2] pixels; normaliser: [N] pixels (> 0), e.g. `interocular_distance`. Returns [N].
    """
    predicted = np.asarray(predicted, np.float64)
    target = np.asarray(target, np.float64)
    normaliser = np.asarray(normaliser, np.float64)
    if predicted.ndim != 3 or predicted.shape != target.shape or predicted.shape[2] != 2:
        raise ValueError(f"predicted and target must both be [N, K, 2], got {list(predicted.shape)} and "
                         f"{list(target.shape)}")
    if normaliser.shape != predicted.shape[:1] or np.any(normaliser <= 0):
        raise ValueError(f"normaliser must be [{predicted.shape[0]}] positive distances, got shape "
                         f"{list(normaliser.shape)}")
    return np.linalg.norm(predicted - target, axis=-1).mean(axis=-1) / normaliser


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Ry(yaw) Rx(pitch), angles in degrees (see the module docstring) -> [3, 3]."""
    return _rotation_matrices(np.radians([yaw, pitch, roll]))


def _rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """`rotation_matrix` of (yaw, pitch, roll) radians [..., 3] -> [..., 3, 3]."""
    cy, sy = np.cos(angles[..., 0]), np.sin(angles[..., 0])
    cp, sp = np.cos(angles[..., 1]), np.sin(angles[..., 1])
    cr, sr = np.cos(angles[..., 2]), np.sin(angles[..., 2])
    zero, one = np.zeros_like(cy), np.ones_like(cy)
    about_x = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], axis=-1).reshape(*cy.shape, 3, 3)
    about_y = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], axis=-1).reshape(*cy.shape, 3, 3)
    about_z = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], axis=-1).reshape(*cy.shape, 3, 3)
    return about_z @ about_y @ about_x


def angles_from_rotation(rotation) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees of R = Rz(roll) Ry(yaw) Rx(pitch); yaw in [-90, 90]."""
    rotation = np.asarray(rotation, np.float64)
    yaw = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    pitch = np.arctan2(rotation[2, 1], rotation[2, 2])
    roll = np.arctan2(rotation[1, 0], rotation[0, 0])
    return tuple(float(angle) for angle in np.degrees([yaw, pitch, roll]))


@dataclass(frozen=True)
class PoseFit:
    """A weak-perspective fit of the generic face: image points ~ scale * (R X)[:2] + translation.

    yaw, pitch, roll: degrees. scale: pixels per millimetre. translation: [2] pixels. rms_error: pixels.
    """

    yaw: float
    pitch: float
    roll: float
    scale: float
    translation: np.ndarray
    rms_error: float


def _projection(parameters: np.ndarray, model: np.ndarray) -> np.ndarray:
    """parameters (yaw, pitch, roll radians, log scale, tx, ty) [..., 6] -> projected model points [..., K, 2]."""
    rotation = _rotation_matrices(parameters[..., :3])
    rotated = np.einsum("kj,...ij->...ki", model, rotation[..., :2, :])
    return np.exp(parameters[..., 3, None, None]) * rotated + parameters[..., None, 4:6]


def _residuals(parameters: np.ndarray, model: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[..., 6] -> [..., 2K]."""
    projected = _projection(parameters, model) - points
    return projected.reshape(*projected.shape[:-2], -1)


def _levenberg_marquardt(parameters: np.ndarray, model: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Minimise the squared reprojection error from `parameters`, with a central-difference Jacobian."""
    damping = 1e-3
    residual = _residuals(parameters, model, points)
    cost = residual @ residual
    steps = np.eye(len(parameters)) * _JACOBIAN_STEP
    for _ in range(_MAX_ITERATIONS):
        # the residuals at parameters +- each step, in one batched evaluation: [2, P, 2K]
        shifted = _residuals(parameters + np.stack([steps, -steps]), model, points)
        jacobian = ((shifted[0] - shifted[1]) / (2 * _JACOBIAN_STEP)).T
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ residual
        update = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -gradient)
        candidate = parameters + update
        candidate_residual = _residuals(candidate, model, points)
        candidate_cost = candidate_residual @ candidate_residual
        if candidate_cost < cost:
            converged = cost - candidate_cost <= 1e-15 * max(cost, 1.0)
            parameters, residual, cost = candidate, candidate_residual, candidate_cost
            damping = max(damping / 10, 1e-12)
            if converged:
                break
        else:
            damping *= 10
            if damping > 1e12:
                break
    return parameters


def _best_similarity_per_view(model: np.ndarray, points: np.ndarray, yaws, pitches) -> np.ndarray:
    """For each (yaw, pitch) view, the least-squares roll, scale and translation, in closed form.

    With the view fixed, the image points are a 2-D similarity of the rotated model's (x, y): written as complex
    numbers, x = a p + b with a = scale * exp(i roll). Returns [G, 7]: yaw, pitch, roll (radians), log scale, tx,
    ty, squared error.
    """
    cy, sy = np.cos(np.radians(yaws))[:, None], np.sin(np.radians(yaws))[:, None]
    cp, sp = np.cos(np.radians(pitches))[:, None], np.sin(np.radians(pitches))[:, None]
    x, y, z = model.T
    # the first two rows of Ry(yaw) Rx(pitch) applied to the model: [G, K]
    projected = (cy * x + sy * sp * y + sy * cp * z) + 1j * (cp * y - sp * z)
    observed = points[:, 0] + 1j * points[:, 1]  # [K]
    projected_centred = projected - projected.mean(axis=1, keepdims=True)
    observed_centred = observed - observed.mean()
    correlation = np.sum(np.conj(projected_centred) * observed_centred, axis=1)
    energy = np.sum(np.abs(projected_centred) ** 2, axis=1)
    gain = correlation / energy
    offset = observed.mean() - gain * projected.mean(axis=1)
    error = np.sum(np.abs(observed_centred) ** 2) - np.abs(correlation) ** 2 / energy
    return np.stack([np.radians(yaws), np.radians(pitches), np.angle(gain), np.log(np.abs(gain)), offset.real,
                     offset.imag, error], axis=1)


def estimate_pose(landmarks, model=GENERIC_FACE_5_POINTS_MM) -> PoseFit:
    """Head pose from 5 landmarks [5, 2] (pixels): a weak-perspective least-squares fit of the generic 3-D face.

    A grid search over yaw and pitch (5 degree steps, roll, scale and translation solved in closed form for each)
    starts Levenberg-Marquardt on (yaw, pitch, roll, log scale, translation).
    """
    points = _landmark_array("landmarks", landmarks, 5)
    model = np.asarray(model, np.float64)
    if model.shape != (5, 3):
        raise ValueError(f"model must be [5, 3] millimetres, got {list(model.shape)}")
    if np.ptp(points, axis=0).max() <= 1e-9:
        raise ValueError("landmarks all coincide: the pose is undefined")

    yaws, pitches = np.meshgrid(_GRID_DEG, _GRID_DEG, indexing="ij")
    views = _best_similarity_per_view(model, points, yaws.ravel(), pitches.ravel())
    best = _levenberg_marquardt(views[np.argmin(views[:, 6]), :6], model, points)

    yaw, pitch, roll = angles_from_rotation(rotation_matrix(*np.degrees(best[:3])))
    residual = _residuals(best, model, points)
    return PoseFit(
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        scale=float(np.exp(best[3])),
        translation=best[4:6].copy(),
        rms_error=float(np.sqrt(np.mean(np.sum(residual.reshape(-1, 2) ** 2, axis=1)))),
    )
