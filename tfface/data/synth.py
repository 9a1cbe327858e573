"""SynthFaces: a procedural face data set rendered with `tfface.rendering` (3D-BERL's image formation model).

Each identity is a face-like surface and an albedo drawn from its own random stream: a head ellipsoid with a neck,
nose (bridge and tip), brow ridge, cheeks, chin, eye sockets and lips, as a canonical depth map built from sums of
ellipsoids and Gaussians; an albedo with skin tone, blush, hair, brows, eyes (sclera, iris, pupil), lips, nostrils and
low-frequency texture. Each image draws its nuisances: yaw, pitch, roll, light direction and strength, a small
expression (mouth opening, brow raise), scale and shift jitter, background and sensor noise. Rendering: canonical
depth and albedo -> normals and Lambertian shading (Eq. 1) -> warp to the view (Eq. 2, `warp_to_view`) -> composite
over the background -> noise -> uint8.

Geometry. Faces are drawn in normalised canonical coordinates q = (q_x, q_y) in [-1, 1]^2 across the image (x right,
y down); a point of height h (in the same units, toward the camera) has depth z = 1 - tan(fov / 2) h metres, so the
head centre is 1 m away, where the view rotates it (Unsup3D's rotation centre). The camera has a 10 degree field of
view (3D-BERL). Depth maps stay in DEPTH_RANGE metres.

Ground truth per image (as stored by `generate`, see `tfface.data.schema`):
- landmarks: the 68-point iBUG layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67; "left" is the
  image's left), projected from 3-D points on the surface, in stored-image pixels with the schema's continuous
  convention (pixel i covers [i, i + 1)); `five_point_landmarks` derives the 5-point set (eye centres, nose tip,
  mouth corners).
- pose: (yaw, pitch, roll) in degrees, the rendering angles: yaw > 0 turns the face toward the image's left, pitch > 0
  tilts it down, roll > 0 turns it clockwise on screen.
- light: (k_a, k_d, l_x, l_y, l_z), l the unit light direction of `tfface.rendering.light_direction`.
- depth: the canonical depth at 64x64 as (z - 0.9) / 0.2 in [0, 1]; albedo: canonical albedo [64, 64, 3] in [0, 1].

Limits: the face is a height field seen from the front, so beyond about 45 degrees of yaw the head looks narrow (it
has no back) and the side turned toward the camera shows the stretched colours of its outline.

Determinism: every random draw comes from numpy generators keyed by (seed, stream, identity, image), so an image does
not depend on batching or on which other images are generated.
"""
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfface import atomic, rendering
from tfface.data import schema
from tfface.data import writer as writer_module
from tfface.data.image_io import write_png_atomic

FOV_DEGREES = 10.0
ROTATION_CENTER_DEPTH = 1.0
DEPTH_RANGE = (0.9, 1.1)
CANONICAL_MAP_SIZE = 64
NUM_LANDMARKS = 68
# 5-point set from the 68: eye centres (mean of each eye's 6 points), nose tip, mouth corners.
FIVE_POINT_EYES = (tuple(range(36, 42)), tuple(range(42, 48)))
FIVE_POINT_INDICES = (30, 48, 54)
LIGHT_FIELDS = ("k_a", "k_d", "l_x", "l_y", "l_z")

_HALF_FOV_TAN = math.tan(math.radians(FOV_DEGREES) / 2.0)
_EDGE_SOFTNESS = 0.012  # width (q units) of the soft edges of albedo regions: ~0.4 px at 64 px

# Random streams: separate generators so that, e.g., changing the label noise leaves the images unchanged.
_IDENTITY_STREAM, _VIEW_STREAM, _LABEL_STREAM, _COUNT_STREAM, _PAIR_STREAM, _ORDER_STREAM = range(6)

_SKIN_DARK = np.array([0.36, 0.23, 0.16])
_SKIN_LIGHT = np.array([0.95, 0.78, 0.68])
_HAIR_COLOURS = np.array([[0.06, 0.05, 0.04], [0.22, 0.14, 0.08], [0.42, 0.28, 0.15], [0.78, 0.64, 0.40],
                          [0.55, 0.24, 0.10], [0.62, 0.62, 0.60]])
_IRIS_COLOURS = np.array([[0.30, 0.17, 0.08], [0.18, 0.10, 0.05], [0.25, 0.42, 0.60], [0.30, 0.45, 0.28],
                          [0.45, 0.40, 0.25]])
_TEXTURE_WAVES = 6
_NOISE_KEYS = ("noise_std", "noise_seed")  # view entries applied in numpy after rendering
_ALPHA_EDGE = 0.02  # width (q units) of the silhouette's linear edge: ~0.6 px at 64 px
_RECEDE_SLOPE = 10.0  # how fast the surface falls behind the head outside its outline (see _dome)


@dataclasses.dataclass(frozen=True)
class SynthOptions:
    """The nuisance ranges and rendering settings (angles in degrees, lengths as fractions of the image width)."""

    image_size: int = 64
    max_yaw: float = 30.0
    max_pitch: float = 15.0
    max_roll: float = 10.0
    max_light: float = 0.8  # |l_dx|, |l_dy| bound of the light direction (l_dx, l_dy, 1)
    ambient: tuple = (0.35, 0.6)  # k_a range
    diffuse: tuple = (0.4, 0.75)  # k_d range
    max_expression: float = 1.0  # scales mouth opening and brow raise (0 = neutral faces)
    scale_jitter: float = 0.06  # relative change of the face distance, +-
    shift_jitter: float = 0.04  # face shift, +- fraction of the image width
    max_noise: float = 0.02  # sensor noise standard deviation bound (pixel values in [0, 1])
    march_steps: int = 32  # ray-marching steps of the warp (see tfface.rendering.warp)

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {self.image_size!r}")
        for name in ("max_yaw", "max_pitch", "max_roll"):
            value = getattr(self, name)
            if not 0.0 <= value <= 60.0:
                raise ValueError(f"{name} must be in [0, 60] degrees, got {value}")
        for name in ("max_light", "max_expression", "scale_jitter", "shift_jitter", "max_noise"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("ambient", "diffuse"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {getattr(self, name)}")
        if self.march_steps < 2:
            raise ValueError(f"march_steps must be >= 2, got {self.march_steps}")


# ------------------------------------------------------------------------------------------------ random draws


def _generator(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, *[int(key) for key in keys]])


def sample_identity(seed: int, identity: int) -> dict:
    """The shape and albedo parameters of one identity: a dict of floats and small arrays (q units, RGB in [0, 1])."""
    rng = _generator(seed, _IDENTITY_STREAM, identity)
    u = rng.uniform
    p = {}
    p["head_ax"], p["head_ay"], p["head_cy"] = u(0.56, 0.68), u(0.74, 0.86), u(-0.06, 0.02)
    p["head_depth"] = u(0.55, 0.7)
    p["neck_w"] = p["head_ax"] * u(0.55, 0.7)
    p["eye_y"], p["eye_dx"] = p["head_cy"] + u(-0.14, -0.06), u(0.22, 0.28)
    p["eye_w"], p["eye_h"] = u(0.085, 0.11), u(0.032, 0.045)
    p["socket_depth"] = u(0.06, 0.12)
    p["brow_gap"], p["brow_arch"], p["brow_thick"] = u(0.1, 0.15), u(0.015, 0.045), u(0.018, 0.032)
    p["brow_ridge"] = u(0.03, 0.08)
    p["nose_y"] = p["eye_y"] + u(0.26, 0.34)
    p["nose_height"], p["nose_w"], p["bridge_height"] = u(0.2, 0.3), u(0.06, 0.09), u(0.08, 0.16)
    p["mouth_y"] = p["nose_y"] + u(0.18, 0.24)
    p["mouth_w"], p["lip_up"], p["lip_low"] = u(0.14, 0.2), u(0.022, 0.035), u(0.03, 0.045)
    p["lip_height"] = u(0.03, 0.06)
    p["chin_height"], p["cheek_height"], p["cheek_dy"] = u(0.05, 0.11), u(0.03, 0.08), u(-0.01, 0.07)
    tone = u(0.0, 1.0)
    p["skin"] = np.clip(_SKIN_DARK + tone * (_SKIN_LIGHT - _SKIN_DARK) + rng.normal(0.0, 0.025, 3), 0.05, 1.0)
    p["blush"] = u(0.0, 0.12)
    p["hair"] = np.clip(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0.0, 0.03, 3), 0.0, 1.0)
    p["hairline"], p["hair_sides"] = p["head_cy"] - p["head_ay"] * u(0.45, 0.7), u(0.0, 0.35)
    p["iris"] = np.clip(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0.0, 0.03, 3), 0.0, 1.0)
    p["lips"] = np.clip(p["skin"] * np.array([0.85, 0.55, 0.55]) + rng.normal(0.0, 0.03, 3), 0.0, 1.0)
    p["texture_frequency"] = rng.uniform(-9.0, 9.0, (_TEXTURE_WAVES, 2))
    p["texture_phase"] = rng.uniform(0.0, 2 * np.pi, _TEXTURE_WAVES)
    p["texture_amplitude"] = rng.uniform(0.0, 0.035, (_TEXTURE_WAVES, 3))
    return p


def sample_view(seed: int, identity: int, image: int, options: SynthOptions) -> dict:
    """The nuisances of one image: angles (degrees), translation (metres), light, expression, background, noise."""
    rng = _generator(seed, _VIEW_STREAM, identity, image)
    u = rng.uniform
    half_width = _HALF_FOV_TAN * ROTATION_CENTER_DEPTH
    return {
        "pitch": u(-options.max_pitch, options.max_pitch),
        "yaw": u(-options.max_yaw, options.max_yaw),
        "roll": u(-options.max_roll, options.max_roll),
        "translation": np.array([
            u(-1, 1) * options.shift_jitter * 2 * half_width,
            u(-1, 1) * options.shift_jitter * 2 * half_width,
            u(-1, 1) * options.scale_jitter * ROTATION_CENTER_DEPTH,
        ]),
        "ambient": u(*options.ambient),
        "diffuse": u(*options.diffuse),
        "l_dx": u(-options.max_light, options.max_light),
        "l_dy": u(-options.max_light, options.max_light),
        "mouth_open": u(0.0, 1.0) ** 2 * options.max_expression,
        "brow_raise": u(0.0, 1.0) * options.max_expression,
        "background": rng.uniform(0.05, 0.95, (2, 3)),
        "background_direction": u(0.0, 2 * np.pi),
        "noise_std": u(0.0, options.max_noise),
        "noise_seed": rng.integers(0, 2**31 - 1),
    }


def _stack(dicts: list) -> dict:
    return {key: np.stack([np.asarray(d[key], np.float32) for d in dicts]) for key in dicts[0]}


# ------------------------------------------------------------------------------------------------ face model (TF)


def _gaussian(qx, qy, cx, cy, sx, sy):
    return tf.exp(-0.5 * (tf.square((qx - cx) / sx) + tf.square((qy - cy) / sy)))


def _soft_inside(signed_distance):
    """Soft indicator of signed_distance > 0 (q units), edge width _EDGE_SOFTNESS."""
    return tf.sigmoid(signed_distance / _EDGE_SOFTNESS)


def _column(params: dict, key: str, extra_dims: int):
    """params[key] [N] or [N, k] -> broadcastable against points [N, P] (and a trailing channel when [N, k])."""
    value = tf.convert_to_tensor(params[key], tf.float32)
    return tf.reshape(value, [-1, 1] + list(value.shape[1:])) if extra_dims else tf.reshape(value, [-1, 1])


def _geometry(p: dict, view: dict) -> dict:
    """Derived feature positions [N, 1] shared by the depth, the albedo and the landmarks (expression included)."""
    c = {key: _column(p, key, 0) for key in p if np.ndim(p[key]) == 1}
    c["brow_y"] = c["eye_y"] - c["brow_gap"] - 0.05 * _column(view, "brow_raise", 0)
    c["gap"] = 0.07 * _column(view, "mouth_open", 0)  # distance between the inner lips
    return c


def _dome(rho2, height):
    """Ellipsoid cap of `height` over rho2 < 1 that falls behind the z = 1 plane outside it, linearly in rho, so that
    the surroundings never occlude the head in a rotated view and the fall maps to transparent canonical pixels."""
    inside = tf.sqrt(tf.maximum(1.0 - rho2, 0.0))
    outside = tf.maximum(tf.sqrt(rho2) - 1.0, 0.0)
    return height * (inside - _RECEDE_SLOPE * outside)


def _head_height(qx, qy, c):
    """Height (q units) of the head ellipsoid and neck cylinder relative to the z = 1 plane."""
    head = _dome(tf.square(qx / c["head_ax"]) + tf.square((qy - c["head_cy"]) / c["head_ay"]), c["head_depth"])
    neck = _dome(tf.square(qx / c["neck_w"]), 0.55 * c["head_depth"])
    return tf.maximum(head, tf.where(qy > c["head_cy"], neck, head))


def _face_height(qx, qy, c):
    """Height (q units) of the face surface: head plus nose, brow ridge, cheeks, chin, eye sockets, lips, mouth."""
    on_face = tf.sqrt(tf.maximum(
        1.0 - tf.square(qx / c["head_ax"]) - tf.square((qy - c["head_cy"]) / c["head_ay"]), 0.0))
    bridge_top = c["eye_y"] - 0.02
    bridge_center = 0.5 * (bridge_top + c["nose_y"])
    bridge_length = c["nose_y"] - bridge_top
    features = (
        c["nose_height"] * _gaussian(qx, qy, 0.0, c["nose_y"], c["nose_w"], 0.07)
        + c["bridge_height"] * _gaussian(qx, qy, 0.0, bridge_center, 0.045, 0.45 * bridge_length)
        + c["brow_ridge"] * _gaussian(qx, qy, 0.0, c["brow_y"] + 0.02, 0.32, 0.05)
        - c["socket_depth"] * (_gaussian(qx, qy, -c["eye_dx"], c["eye_y"], 0.09, 0.06)
                               + _gaussian(qx, qy, c["eye_dx"], c["eye_y"], 0.09, 0.06))
        + c["cheek_height"] * (_gaussian(qx, qy, -0.32, c["nose_y"] + c["cheek_dy"], 0.13, 0.12)
                               + _gaussian(qx, qy, 0.32, c["nose_y"] + c["cheek_dy"], 0.13, 0.12))
        + c["lip_height"] * _gaussian(qx, qy, 0.0, c["mouth_y"], c["mouth_w"] * 0.8, 0.05)
        - 0.6 * c["gap"] * _gaussian(qx, qy, 0.0, c["mouth_y"], c["mouth_w"] * 0.7, 0.03)
        + c["chin_height"] * _gaussian(qx, qy, 0.0, c["head_cy"] + 0.88 * c["head_ay"], 0.13, 0.07)
    )
    return _head_height(qx, qy, c) + features * tf.minimum(1.0, 3.0 * on_face)


def _depth_from_height(height):
    return tf.clip_by_value(ROTATION_CENTER_DEPTH - _HALF_FOV_TAN * height, DEPTH_RANGE[0], DEPTH_RANGE[1])


def _head_alpha(qx, qy, c):
    """Silhouette [N, P] of head, hair and neck in the canonical view: 1 inside, a linear edge _ALPHA_EDGE wide, and
    exactly 0 where the surface falls behind the head (so that fall shows the background in rotated views)."""
    rho = tf.sqrt(tf.square(qx / c["head_ax"]) + tf.square((qy - c["head_cy"]) / c["head_ay"]))
    head = tf.clip_by_value((1.0 - rho) * c["head_ax"] / _ALPHA_EDGE, 0.0, 1.0)
    neck = tf.clip_by_value((c["neck_w"] - tf.abs(qx)) / _ALPHA_EDGE, 0.0, 1.0)
    return tf.maximum(head, tf.where(qy > c["head_cy"], neck, 0.0))


def _lip_curves(qx, c):
    """Outer and inner lip boundaries (y, q units) of upper and lower lip at qx: half-ellipses about the mouth line."""
    outer = tf.sqrt(tf.maximum(1.0 - tf.square(qx / c["mouth_w"]), 0.0))
    inner = tf.sqrt(tf.maximum(1.0 - tf.square(qx / (0.85 * c["mouth_w"])), 0.0))
    half_gap = 0.5 * c["gap"]
    return {
        "upper_outer": c["mouth_y"] - (half_gap + c["lip_up"]) * outer,
        "upper_inner": c["mouth_y"] - half_gap * inner,
        "lower_inner": c["mouth_y"] + half_gap * inner,
        "lower_outer": c["mouth_y"] + (half_gap + c["lip_low"]) * outer,
    }


def _brow_y(qx, side, c):
    """y of the brow curve of side -1 (image left) or +1 at qx: an arch over the eye."""
    offset = (qx - side * c["eye_dx"]) / (1.3 * c["eye_w"])
    return c["brow_y"] - c["brow_arch"] * (1.0 - tf.square(offset))


def _albedo(qx, qy, c, p):
    """Canonical albedo [N, P, 3] in [0, 1]."""
    col = {key: _column(p, key, 1) for key in ("skin", "hair", "iris", "lips")}
    frequency = tf.convert_to_tensor(p["texture_frequency"], tf.float32)  # [N, K, 2]
    phase = tf.convert_to_tensor(p["texture_phase"], tf.float32)  # [N, K]
    waves = tf.cos(qx[:, :, None] * frequency[:, None, :, 0] + qy[:, :, None] * frequency[:, None, :, 1]
                   + phase[:, None, :])  # [N, P, K]
    texture = tf.einsum("npk,nkc->npc", waves, tf.convert_to_tensor(p["texture_amplitude"], tf.float32))
    blush = c["blush"] * (_gaussian(qx, qy, -0.33, c["nose_y"], 0.1, 0.08)
                          + _gaussian(qx, qy, 0.33, c["nose_y"], 0.1, 0.08))
    albedo = col["skin"] * (1.0 + texture) + blush[..., None] * tf.constant([0.25, -0.1, -0.1])

    rho = tf.sqrt(tf.square(qx / c["head_ax"]) + tf.square((qy - c["head_cy"]) / c["head_ay"]))
    hairline = c["hairline"] + c["hair_sides"] * tf.square(qx / c["head_ax"])
    hair = tf.maximum(_soft_inside(hairline - qy), _soft_inside(rho - 0.93) * _soft_inside(c["eye_y"] - qy))
    albedo = albedo + hair[..., None] * (col["hair"] - albedo)

    for side in (-1.0, 1.0):
        brow_x = (qx - side * (c["eye_dx"] + 0.1 * c["eye_w"])) / (1.35 * c["eye_w"])
        brow = (_soft_inside(c["brow_thick"] * tf.sqrt(tf.maximum(1.0 - tf.square(brow_x), 0.0))
                             - tf.abs(qy - _brow_y(qx, side, c)))
                * _soft_inside((1.0 - tf.abs(brow_x)) * c["eye_w"]))
        albedo = albedo + (0.85 * brow)[..., None] * (col["hair"] * 0.8 - albedo)
        eye_rho = tf.sqrt(tf.square((qx - side * c["eye_dx"]) / c["eye_w"]) + tf.square((qy - c["eye_y"]) / c["eye_h"]))
        sclera = _soft_inside((1.0 - eye_rho) * c["eye_h"])
        iris_r = tf.sqrt(tf.square(qx - side * c["eye_dx"]) + tf.square(qy - c["eye_y"]))
        iris = _soft_inside(0.9 * c["eye_h"] - iris_r) * sclera
        pupil = _soft_inside(0.4 * c["eye_h"] - iris_r) * sclera
        lash = _soft_inside(0.012 - tf.abs(eye_rho - 1.0) * c["eye_h"]) * _soft_inside(c["eye_y"] - qy)
        albedo = albedo + sclera[..., None] * (tf.constant([0.88, 0.86, 0.82]) - albedo)
        albedo = albedo + iris[..., None] * (col["iris"] - albedo)
        albedo = albedo + pupil[..., None] * (0.03 - albedo)
        albedo = albedo + (0.8 * lash)[..., None] * (0.05 - albedo)
        nostril = _gaussian(qx, qy, side * 0.7 * c["nose_w"], c["nose_y"] + 0.045, 0.018, 0.01)
        albedo = albedo * (1.0 - 0.6 * nostril[..., None])

    lips = _lip_curves(qx, c)
    in_lips = (_soft_inside(qy - lips["upper_outer"]) * _soft_inside(lips["lower_outer"] - qy)
               * _soft_inside(c["mouth_w"] - tf.abs(qx)))
    in_mouth = (_soft_inside(qy - lips["upper_inner"]) * _soft_inside(lips["lower_inner"] - qy)
                * _soft_inside(0.85 * c["mouth_w"] - tf.abs(qx)))
    albedo = albedo + in_lips[..., None] * (col["lips"] - albedo)
    albedo = albedo + in_mouth[..., None] * (tf.constant([0.15, 0.04, 0.05]) - albedo)
    return tf.clip_by_value(albedo, 0.0, 1.0)


def _landmarks_q(c):
    """The 68 iBUG landmarks [N, 68, 2] in canonical q coordinates (image-left = subject's right first)."""
    ones = tf.ones_like(c["eye_y"])

    def point(x, y):
        return tf.concat([x * ones, y * ones], axis=-1)  # [N, 2]

    points = []
    # jaw 0-16: the lower head outline from ear level (just below the eyes) through the chin
    top = tf.clip_by_value((c["eye_y"] + 0.06 - c["head_cy"]) / (0.96 * c["head_ay"]), -1.0, 1.0)
    start = tf.asin(top)
    for k in range(17):
        angle = start + (math.pi - 2.0 * start) * k / 16.0
        points.append(point(-0.96 * c["head_ax"] * tf.cos(angle), c["head_cy"] + 0.96 * c["head_ay"] * tf.sin(angle)))
    # brows 17-21 (image left, outer to inner) and 22-26 (image right, inner to outer)
    for side, fractions in ((-1.0, (1.0, 0.5, 0.0, -0.5, -1.0)), (1.0, (-1.0, -0.5, 0.0, 0.5, 1.0))):
        for fraction in fractions:
            x = side * (c["eye_dx"] + 0.1 * c["eye_w"]) + side * fraction * 1.2 * c["eye_w"]
            points.append(point(x, _brow_y(x, side, c)))
    # nose bridge 27-30 (top to tip) and lower nose 31-35 (image left to right)
    for k in range(4):
        points.append(point(0.0, c["eye_y"] + (c["nose_y"] - c["eye_y"]) * k / 3.0))
    for fraction, lift in ((-1.0, 0.0), (-0.5, 0.01), (0.0, 0.015), (0.5, 0.01), (1.0, 0.0)):
        points.append(point(fraction * 1.1 * c["nose_w"], c["nose_y"] + 0.05 - lift))
    # eyes 36-41 (image left) and 42-47 (image right), each: corner at -x, upper lid x2, corner at +x, lower lid x2
    for side in (-1.0, 1.0):
        for fx, lid in ((-1.0, 0.0), (-1 / 3, -1.0), (1 / 3, -1.0), (1.0, 0.0), (1 / 3, 1.0), (-1 / 3, 1.0)):
            y = c["eye_y"] + lid * c["eye_h"] * math.sqrt(1.0 - fx * fx)
            points.append(point(side * c["eye_dx"] + fx * c["eye_w"], y))
    # mouth 48-59 outer (left corner, upper lip to right corner, lower lip back), 60-67 inner
    third = 1.0 / 3.0
    outer_x = (-1.0, -2 * third, -third, 0.0, third, 2 * third, 1.0, 2 * third, third, 0.0, -third, -2 * third)
    for k, fraction in enumerate(outer_x):
        x = fraction * c["mouth_w"]
        lips = _lip_curves(x, c)
        points.append(point(x, lips["upper_outer"] if k <= 6 else lips["lower_outer"]))
    inner_x = (-0.85, -third, 0.0, third, 0.85, third, 0.0, -third)
    for k, fraction in enumerate(inner_x):
        x = fraction * c["mouth_w"]
        lips = _lip_curves(x, c)
        points.append(point(x, lips["upper_inner"] if k <= 4 else lips["lower_inner"]))
    return tf.stack(points, axis=1)


def five_point_landmarks(landmarks68):
    """[..., 68, 2] iBUG landmarks -> [..., 5, 2]: left eye, right eye, nose tip, left and right mouth corner."""
    landmarks68 = np.asarray(landmarks68)
    if landmarks68.shape[-2:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks68 must have shape [..., 68, 2], got {landmarks68.shape}")
    eyes = [landmarks68[..., list(indices), :].mean(axis=-2) for indices in FIVE_POINT_EYES]
    others = [landmarks68[..., index, :] for index in FIVE_POINT_INDICES]
    return np.stack([eyes[0], eyes[1], others[0], others[1], others[2]], axis=-2)


# ------------------------------------------------------------------------------------------------ rendering


def _grid_q(size: int):
    """[1, size * size] q_x and q_y of every pixel centre, row-major."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    qy, qx = np.meshgrid(axis, axis, indexing="ij")
    return tf.constant(qx.reshape(1, -1)), tf.constant(qy.reshape(1, -1))


@tf.function(jit_compile=True, autograph=False)
def _canonical_maps(p, c, size):
    """Canonical depth [N, size, size] (metres), albedo [N, size, size, 3] and silhouette [N, size, size].

    Compiled with XLA: the maps are long chains of per-pixel arithmetic that it fuses (~3x less CPU time)."""
    qx, qy = _grid_q(size)
    batch = tf.shape(c["eye_y"])[0]
    qx, qy = tf.tile(qx, [batch, 1]), tf.tile(qy, [batch, 1])
    depth = _depth_from_height(_face_height(qx, qy, c))
    return (tf.reshape(depth, [-1, size, size]), tf.reshape(_albedo(qx, qy, c, p), [-1, size, size, 3]),
            tf.reshape(_head_alpha(qx, qy, c), [-1, size, size]))


def _render_batch(p: dict, v: dict, size: int, march_steps: int) -> dict:
    """Stacked identity and view parameters [N, ...] -> images and ground truth (float32 tensors)."""
    c = _geometry(p, v)
    depth, albedo, alpha = _canonical_maps(p, c, size)
    K = rendering.intrinsics_from_fov(FOV_DEGREES, size, size)
    light = rendering.light_direction(v["l_dx"], v["l_dy"])
    shaded = rendering.lambertian(albedo, rendering.normals_from_depth(depth, K), v["ambient"], v["diffuse"], light)
    angles = tf.stack([v["pitch"], v["yaw"], v["roll"]], axis=-1) * (math.pi / 180.0)
    warped, valid = rendering.warp_to_view(tf.concat([shaded, alpha[..., None]], axis=-1), depth, angles,
                                           v["translation"], K, ROTATION_CENTER_DEPTH, march_steps)
    # The silhouette edge is stretched where the view sees the head's sides (canonical grazing angles): re-sharpen it.
    coverage = tf.clip_by_value(4.0 * warped[..., 3:4] - 1.5, 0.0, 1.0) * valid[..., None]

    qx, qy = _grid_q(size)
    direction = tf.stack([tf.cos(v["background_direction"]), tf.sin(v["background_direction"])], axis=-1)
    ramp = 0.5 + 0.35 * (qx * direction[:, 0:1] + qy * direction[:, 1:2])  # [N, P]
    background = v["background"][:, None, 0] + ramp[..., None] * (v["background"][:, None, 1] - v["background"][:, None, 0])
    background = tf.reshape(background, [-1, size, size, 3])
    image = coverage * tf.clip_by_value(warped[..., :3], 0.0, 1.0) + (1.0 - coverage) * background

    landmarks_q = _landmarks_q(c)
    landmark_depth = _depth_from_height(_face_height(landmarks_q[..., 0], landmarks_q[..., 1], c))
    points = tf.concat([landmarks_q * (_HALF_FOV_TAN * landmark_depth[..., None]), landmark_depth[..., None]], -1)
    landmarks = rendering.project(rendering.to_view(points, angles, v["translation"], ROTATION_CENTER_DEPTH), K)

    if size != CANONICAL_MAP_SIZE:
        depth, albedo, _ = _canonical_maps(p, c, CANONICAL_MAP_SIZE)
    return {
        "image": image,
        "landmarks": landmarks + 0.5,  # pixel centres at integers -> the schema's continuous pixel coordinates
        "depth": (depth - DEPTH_RANGE[0]) / (DEPTH_RANGE[1] - DEPTH_RANGE[0]),
        "albedo": albedo,
    }


_render_compiled = tf.function(_render_batch, autograph=False)  # shared by all renderers: traced once per batch shape and options


class SynthFaceRenderer:
    """Renders SynthFaces images for (identity, image index) keys; the same key always gives the same image.

    Images are rendered in batches of batch_size (the last one padded), so every call runs one compiled shape.
    """

    def __init__(self, options: SynthOptions = SynthOptions(), batch_size: int = 128):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.options = options
        self.batch_size = batch_size

    def render(self, seed: int, identities, images) -> dict:
        """identities, images: int sequences [N] -> dict of numpy arrays for those images:

        "image" uint8 [N, S, S, 3]; "landmarks" float32 [N, 68, 2] (schema pixels); "pose" float32 [N, 3] (yaw, pitch,
        roll degrees); "light" float32 [N, 5] (k_a, k_d, l_x, l_y, l_z); "depth" float32 [N, 64, 64] in [0, 1];
        "albedo" float32 [N, 64, 64, 3] in [0, 1].
        """
        identities, images = np.asarray(identities, np.int64), np.asarray(images, np.int64)
        if identities.shape != images.shape or identities.ndim != 1 or identities.size == 0:
            raise ValueError(f"identities and images must be non-empty 1-D sequences of one length, got "
                             f"{identities.shape} and {images.shape}")
        views = [sample_view(seed, identity, image, self.options) for identity, image in zip(identities, images)]
        return self.render_views(seed, identities, views)

    def render_views(self, seed: int, identities, views: list) -> dict:
        """Like `render`, with the nuisances given: views[i] is a `sample_view` dict (edit it to pose a face)."""
        identities = np.asarray(identities, np.int64)
        if identities.ndim != 1 or identities.size == 0 or identities.size != len(views):
            raise ValueError(f"identities must be a non-empty 1-D sequence as long as views, got {identities.shape} "
                             f"and {len(views)} views")
        chunks = [self._render_chunk(seed, identities[start:start + self.batch_size],
                                     views[start:start + self.batch_size])
                  for start in range(0, identities.size, self.batch_size)]
        return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}

    def _render_chunk(self, seed, identities, views) -> dict:
        count = identities.size
        padded = np.arange(self.batch_size) % count  # repeat keys to fill the batch; the copies are dropped
        identity_params = _stack([sample_identity(seed, identities[i]) for i in padded])
        view_params = _stack([{key: value for key, value in views[i].items() if key not in _NOISE_KEYS}
                              for i in padded])
        rendered = {key: value.numpy()[:count] for key, value in _render_compiled(
            identity_params, view_params, self.options.image_size, self.options.march_steps).items()}
        noisy = np.stack([
            image + view["noise_std"] * np.random.default_rng(view["noise_seed"]).normal(size=image.shape)
            for image, view in zip(rendered["image"], views)
        ])
        view_params = {key: value[:count] for key, value in view_params.items()}
        direction = np.stack([view_params["l_dx"], view_params["l_dy"], np.ones(count, np.float32)], -1)
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        return {
            "image": np.round(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8),
            "landmarks": rendered["landmarks"].astype(np.float32),
            "pose": np.stack([view_params["yaw"], view_params["pitch"], view_params["roll"]], -1),
            "light": np.concatenate([view_params["ambient"][:, None], view_params["diffuse"][:, None], direction], -1),
            "depth": np.clip(rendered["depth"], 0.0, 1.0),
            "albedo": np.clip(rendered["albedo"], 0.0, 1.0),
        }


# ------------------------------------------------------------------------------------------------ data set


def identity_name(identity: int) -> str:
    """The folder and class name of an identity, e.g. "synth_000042"."""
    return f"synth_{identity:06d}"


def images_per_identity_counts(identities: int, images_per_identity: int, seed: int, long_tail: float = 0.0):
    """[identities] int image counts: images_per_identity each, or Zipf-like with long_tail = a > 0.

    Long tail: the identity of rank r = 1..identities (ranks in a seeded random order) gets
    max(2, round(images_per_identity * r^-a)) images.
    """
    if identities < 1 or images_per_identity < 1:
        raise ValueError(f"identities and images_per_identity must be >= 1, got {identities} and {images_per_identity}")
    if long_tail < 0.0:
        raise ValueError(f"long_tail must be >= 0, got {long_tail}")
    if long_tail == 0.0:
        return np.full(identities, images_per_identity, np.int64)
    ranks = _generator(seed, _COUNT_STREAM).permutation(identities) + 1
    return np.maximum(2, np.round(images_per_identity * ranks.astype(np.float64) ** -long_tail)).astype(np.int64)


def noisy_labels(true_labels, num_classes: int, rate: float, seed: int):
    """Given labels [N]: each true label is replaced, with probability rate, by a uniformly drawn other class."""
    true_labels = np.asarray(true_labels, np.int64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {rate}")
    if rate > 0.0 and num_classes < 2:
        raise ValueError("label noise needs at least 2 identities")
    rng = _generator(seed, _LABEL_STREAM)
    flip = rng.random(true_labels.size) < rate
    other = rng.integers(0, max(num_classes - 1, 1), true_labels.size)
    other = other + (other >= true_labels)  # skip the true label
    return np.where(flip, other, true_labels)


def lfw_pairs(counts: dict, folds: int, pairs_per_fold: int, seed: int):
    """LFW View 2 pairs over identities {name: image count} -> (folds, pairs per fold, lines of pairs.txt).

    Identities are dealt to folds (no identity in two folds); each fold gets the same number P of matched pairs
    `name n1 n2` and of mismatched pairs `name1 n1 name2 n2` (1-based image numbers), P the smallest of pairs_per_fold
    and what every fold allows. Folds shrink to half the identity count when there are too few identities.
    """
    names = sorted(counts)
    folds = min(folds, len(names) // 2)
    if folds < 1:
        raise ValueError(f"pairs need at least 2 test identities, got {len(names)}")
    rng = _generator(seed, _PAIR_STREAM)
    order = [names[i] for i in rng.permutation(len(names))]
    fold_names = [sorted(order[fold::folds]) for fold in range(folds)]
    matched_capacity = [sum(counts[n] * (counts[n] - 1) // 2 for n in group) for group in fold_names]
    mismatched_capacity = [(sum(counts[n] for n in group) ** 2 - sum(counts[n] ** 2 for n in group)) // 2
                           for group in fold_names]
    per_fold = min([pairs_per_fold] + matched_capacity + mismatched_capacity)
    if per_fold < 1:
        raise ValueError("matched pairs need test identities with at least 2 images each")

    def draw_unique(draw):
        chosen = set()
        while len(chosen) < per_fold:
            chosen.add(draw())
        return sorted(chosen)

    lines = []
    for group in fold_names:
        with_pairs = [n for n in group if counts[n] >= 2]

        def matched():
            name = with_pairs[rng.integers(len(with_pairs))]
            first, second = sorted(rng.choice(counts[name], 2, replace=False) + 1)
            return name, int(first), int(second)

        def mismatched():
            first, second = sorted(rng.choice(len(group), 2, replace=False))
            name1, name2 = group[first], group[second]
            return name1, int(rng.integers(counts[name1]) + 1), name2, int(rng.integers(counts[name2]) + 1)

        lines += [f"{name}\t{n1}\t{n2}" for name, n1, n2 in draw_unique(matched)]
        lines += [f"{name1}\t{n1}\t{name2}\t{n2}" for name1, n1, name2, n2 in draw_unique(mismatched)]
    return folds, per_fold, lines


def _write_examples(writer, rendered: dict, keys, labels, true_labels) -> None:
    for index, ((identity, image), label, true_label) in enumerate(zip(keys, labels, true_labels)):
        writer.write(schema.make_example(
            rendered["image"][index], int(label), true_label=int(true_label),
            landmarks=rendered["landmarks"][index], pose=rendered["pose"][index], light=rendered["light"][index],
            source_id=f"{identity_name(identity)}/{image + 1:04d}",
            depth=rendered["depth"][index], albedo=rendered["albedo"][index],
        ))


def generate(out_dir, identities: int, images_per_identity: int, seed: int, *, test_identities: int = 0,
             test_images_per_identity: int | None = None, label_noise: float = 0.0, long_tail: float = 0.0,
             options: SynthOptions = SynthOptions(), folds: int = 10, pairs_per_fold: int = 300,
             batch_size: int = 128, examples_per_shard: int = 2000, progress: bool = True) -> dict:
    """Writes a SynthFaces data set to out_dir and returns its summary (also stored as out_dir/synth.json).

    - out_dir/train-*.tfrecord + train.json: identities 0..identities-1 (class names `identity_name`), counts from
      `images_per_identity_counts(identities, images_per_identity, seed, long_tail)`, written in a seeded random
      order; label = the given label (`noisy_labels` at rate label_noise), true_label = the identity.
    - with test_identities T > 0, identities identities..identities+T-1 (disjoint from training), each with
      test_images_per_identity (default images_per_identity) images and clean labels 0..T-1:
      out_dir/test/<name>/<name>_0001.png (LFW layout), out_dir/test/pairs.txt (LFW View 2 format, see `lfw_pairs`),
      and out_dir/test-*.tfrecord + test.json with all ground truth.
    Every example stores landmarks (68), pose, light, canonical depth and albedo (see the module docstring).
    """
    if identities < 1:
        raise ValueError(f"identities must be >= 1, got {identities}")
    if test_identities < 0:
        raise ValueError(f"test_identities must be >= 0, got {test_identities}")
    test_images_per_identity = images_per_identity if test_images_per_identity is None else test_images_per_identity
    if test_identities and test_images_per_identity < 2:
        raise ValueError(f"test_images_per_identity must be >= 2 for matched pairs, got {test_images_per_identity}")
    out_dir = Path(out_dir)
    counts = images_per_identity_counts(identities, images_per_identity, seed, long_tail)
    train_keys = [(identity, image) for identity in range(identities) for image in range(counts[identity])]
    train_keys = [train_keys[i] for i in _generator(seed, _ORDER_STREAM).permutation(len(train_keys))]
    true_labels = np.array([identity for identity, _ in train_keys], np.int64)
    given_labels = noisy_labels(true_labels, identities, label_noise, seed)
    test_ids = list(range(identities, identities + test_identities))
    test_keys = [(identity, image) for identity in test_ids for image in range(test_images_per_identity)]

    renderer = SynthFaceRenderer(options, batch_size)
    started = time.perf_counter()
    with tqdm(total=len(train_keys) + len(test_keys), desc="SynthFaces", unit="img", disable=not progress) as bar:
        with writer_module.ShardedTFRecordWriter(out_dir, "train", examples_per_shard,
                                                 class_names=[identity_name(i) for i in range(identities)]) as writer:
            for start in range(0, len(train_keys), batch_size):
                keys = train_keys[start:start + batch_size]
                rendered = renderer.render(seed, [k[0] for k in keys], [k[1] for k in keys])
                _write_examples(writer, rendered, keys, given_labels[start:start + batch_size],
                                true_labels[start:start + batch_size])
                bar.update(len(keys))
        pairs = None
        if test_keys:
            test_dir = out_dir / "test"
            with writer_module.ShardedTFRecordWriter(out_dir, "test", examples_per_shard,
                                                     class_names=[identity_name(i) for i in test_ids]) as writer:
                for start in range(0, len(test_keys), batch_size):
                    keys = test_keys[start:start + batch_size]
                    rendered = renderer.render(seed, [k[0] for k in keys], [k[1] for k in keys])
                    labels = [identity - identities for identity, _ in keys]
                    _write_examples(writer, rendered, keys, labels, labels)
                    for (identity, image), pixels in zip(keys, rendered["image"]):
                        folder = test_dir / identity_name(identity)
                        write_png_atomic(folder / f"{identity_name(identity)}_{image + 1:04d}.png", pixels)
                    bar.update(len(keys))
            pair_folds, per_fold, lines = lfw_pairs({identity_name(i): test_images_per_identity for i in test_ids},
                                                    folds, pairs_per_fold, seed)
            atomic.write_text(test_dir / "pairs.txt", f"{pair_folds}\t{per_fold}\n" + "\n".join(lines) + "\n")
            pairs = {"folds": pair_folds, "pairs_per_fold": per_fold}
    seconds = time.perf_counter() - started

    summary = {
        "seed": seed,
        "options": dataclasses.asdict(options),
        "train": {
            "identities": identities,
            "images": len(train_keys),
            "images_per_identity": images_per_identity,
            "long_tail": long_tail,
            "label_noise": label_noise,
            "noisy_labels": int(np.sum(given_labels != true_labels)),
        },
        "test": {"identities": test_identities, "images": len(test_keys),
                 "images_per_identity": test_images_per_identity if test_identities else 0, "pairs": pairs},
        "conventions": {
            "landmarks": "68-point iBUG layout, stored-image pixels, pixel i covers [i, i + 1)",
            "pose": "(yaw, pitch, roll) degrees; yaw > 0 turns the face to the image's left, pitch > 0 down, "
                    "roll > 0 clockwise",
            "light": list(LIGHT_FIELDS),
            "depth": f"canonical depth at {CANONICAL_MAP_SIZE}x{CANONICAL_MAP_SIZE} as (z - {DEPTH_RANGE[0]}) / "
                     f"{DEPTH_RANGE[1] - DEPTH_RANGE[0]:.1f}, z in metres, camera field of view {FOV_DEGREES} degrees",
            "albedo": f"canonical albedo at {CANONICAL_MAP_SIZE}x{CANONICAL_MAP_SIZE}, RGB in [0, 1]",
        },
        "seconds": round(seconds, 2),
        "images_per_second": round((len(train_keys) + len(test_keys)) / max(seconds, 1e-9), 1),
    }
    atomic.write_json(out_dir / "synth.json", summary)
    return summary
