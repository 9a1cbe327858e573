"""Face detection with 5 landmarks: a wrapper around MTCNN (the `mtcnn` PyPI package, weights inside it).

MTCNN reports pixel-index coordinates (pixel centres on integers); `FaceDetector` returns continuous pixel
coordinates (pixel column i covers [i, i + 1), as in `tfface.data.schema`): landmarks + 0.5, and the inclusive
box [x1, x2] becomes [x1, x2 + 1). Landmarks follow `tfface.data.landmarks.FIVE_POINT_NAMES`.

Speed: the package runs its three networks eagerly, one call per pyramid scale, which costs more than the
convolutions on small photos. `FaceDetector` wraps each network in a `tf.function` (the same weights and numbers)
and `detect_batch` hands MTCNN the images of one size together, so each scale is one call for the whole group.
"""
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_MAX_SIDE = 1024
MAX_BATCH_PIXELS = 8_000_000  # images of one size detected together: at most this many pixels per MTCNN call


@dataclass(frozen=True)
class DetectedFace:
    """box: [4] (x0, y0, x1, y1) pixels; confidence: in [0, 1]; landmarks: [5, 2] (x, y) pixels."""

    box: np.ndarray
    confidence: float
    landmarks: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2


def central_face(faces, image_height: int, image_width: int) -> DetectedFace | None:
    """The face whose box centre is nearest the image centre (the more confident one on a tie); None if none."""
    if not faces:
        return None
    image_centre = np.array([image_width / 2, image_height / 2])
    return min(faces, key=lambda face: (float(np.linalg.norm(face.centre - image_centre)), -face.confidence))


class FaceDetector:
    """MTCNN face and 5-landmark detector.

    Args:
      min_face_size: smallest face side searched for, in pixels of the image given to MTCNN.
      thresholds: the P-, R- and O-net confidence thresholds.
      max_side: an image whose longer side exceeds this is detected on a box-filtered copy scaled down to it
        (faster on big photos; coordinates are scaled back). None: always full size.
      device: the TensorFlow device MTCNN runs on, e.g. "CPU:0" or "GPU:0".
    """

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.8), max_side: int | None = DEFAULT_MAX_SIDE,
                 device: str = "CPU:0"):
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 (MTCNN's smallest window), got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= value <= 1.0 for value in thresholds):
            raise ValueError(f"thresholds must be 3 values in [0, 1] (P-, R-, O-net), got {thresholds!r}")
        if max_side is not None and max_side < 12:
            raise ValueError(f"max_side must be None or >= 12, got {max_side}")
        try:
            from mtcnn import MTCNN
        except ImportError as error:
            raise ImportError("face detection needs the `mtcnn` package (pinned in requirements.txt): "
                              "pip install mtcnn==1.0.0") from error
        self._mtcnn = MTCNN(device=device)
        _compile_networks(self._mtcnn)
        self._options = {
            "min_face_size": int(min_face_size),
            "threshold_pnet": float(thresholds[0]),
            "threshold_rnet": float(thresholds[1]),
            "threshold_onet": float(thresholds[2]),
        }
        self.max_side = max_side

    def detect(self, image) -> list[DetectedFace]:
        """All faces in uint8 RGB pixels [H, W, 3] (grey [H, W] is accepted), most confident first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images) -> list[list[DetectedFace]]:
        """`detect` for each image of a list, in order; images of one size (after `max_side`) share MTCNN calls."""
        prepared = [self._prepare(image) for image in images]
        by_shape = defaultdict(list)
        for index, (pixels, _) in enumerate(prepared):
            by_shape[pixels.shape].append(index)
        faces = [[] for _ in prepared]
        for shape, indices in by_shape.items():
            per_call = max(1, MAX_BATCH_PIXELS // (shape[0] * shape[1]))
            for start in range(0, len(indices), per_call):
                group = indices[start:start + per_call]
                rows = self._mtcnn.detect_faces([prepared[index][0] for index in group], output_type="numpy",
                                                box_format="xyxy", **self._options)
                # row: image index in the group, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y (pixel-index
                # coordinates)
                for row in np.asarray(rows).reshape(-1, 16):
                    index = group[int(row[0])]
                    faces[index].append(_face(row, prepared[index][1]))
        return [sorted(found, key=lambda face: -face.confidence) for found in faces]

    def _prepare(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(the uint8 [h, w, 3] pixels MTCNN sees, their (x, y) pixels per original pixel)."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image must be uint8 [H, W, 3] or [H, W], got {image.dtype} {list(image.shape)}")
        scale = np.ones(2)
        if self.max_side is not None and max(image.shape[:2]) > self.max_side:
            shrink = self.max_side / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
            scale = np.array(size) / [image.shape[1], image.shape[0]]
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        return image, scale


def _face(row: np.ndarray, scale: np.ndarray) -> DetectedFace:
    """One MTCNN output row (pixel indices of the detected copy) in continuous pixels of the original image."""
    return DetectedFace(
        box=(np.asarray(row[1:5], np.float64) + [0.0, 0.0, 1.0, 1.0]) / np.tile(scale, 2),
        confidence=float(row[5]),
        landmarks=(np.stack([row[6:11], row[11:16]], axis=1).astype(np.float64) + 0.5) / scale,
    )


def _compile_networks(mtcnn) -> None:
    """Run each stage's Keras network (P-, R-, O-net) as a tf.function: one graph per input shape family instead of
    an eager op-by-op call (mtcnn 1.0.0 keeps the network of a stage in `_model`)."""
    import tensorflow as tf

    for stage in getattr(mtcnn, "stages", ()):
        network = getattr(stage, "_model", None)
        if network is not None:
            stage._model = tf.function(network, reduce_retracing=True)
