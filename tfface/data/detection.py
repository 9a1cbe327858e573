"""Face detection with 5 landmarks: a wrapper around MTCNN (the `mtcnn` PyPI package, weights inside it).

MTCNN reports pixel-index coordinates (pixel centres on integers); `FaceDetector` returns continuous pixel
coordinates (pixel column i covers [i, i + 1), as in `tfface.data.schema`): landmarks + 0.5, and the inclusive
box [x1, x2] becomes [x1, x2 + 1). Landmarks follow `tfface.data.landmarks.FIVE_POINT_NAMES`.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_MAX_SIDE = 1024


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
        self._options = {
            "min_face_size": int(min_face_size),
            "threshold_pnet": float(thresholds[0]),
            "threshold_rnet": float(thresholds[1]),
            "threshold_onet": float(thresholds[2]),
        }
        self.max_side = max_side

    def detect(self, image) -> list[DetectedFace]:
        """All faces in uint8 RGB pixels [H, W, 3] (grey [H, W] is accepted), most confident first."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image must be uint8 [H, W, 3] or [H, W], got {image.dtype} {list(image.shape)}")
        scale = np.ones(2)  # (x, y) pixels of the detected image per original pixel
        if self.max_side is not None and max(image.shape[:2]) > self.max_side:
            shrink = self.max_side / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
            scale = np.array(size) / [image.shape[1], image.shape[0]]
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        rows = self._mtcnn.detect_faces(image, output_type="numpy", box_format="xyxy", **self._options)
        # row: image index, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y (pixel-index coordinates)
        faces = [
            DetectedFace(
                box=(np.asarray(row[1:5], np.float64) + [0.0, 0.0, 1.0, 1.0]) / np.tile(scale, 2),
                confidence=float(row[5]),
                landmarks=(np.stack([row[6:11], row[11:16]], axis=1).astype(np.float64) + 0.5) / scale,
            )
            for row in np.asarray(rows).reshape(-1, 16)
        ]
        return sorted(faces, key=lambda face: -face.confidence)
