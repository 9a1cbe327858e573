"""Faces in photos: detect, align, embed and verify in one object, on any exported model.

    analyzer = FaceAnalyzer("models/arcface/1")          # or model.tflite, model.onnx
    photos = analyzer.embed(["a.jpg", image_array])     # per photo: a list of Face, [] when it has no face
    photos[0][0].embedding, photos[0][0].box, photos[0][0].landmarks, photos[0][0].score
    result = analyzer.verify("a.jpg", "b.jpg")          # Verification: score, threshold, same (None: no face)

Photos are image files (read upright per EXIF, RGB) or uint8 RGB arrays [H, W, 3] of any size. MTCNN
(tfface.data.detection) finds every face and its 5 landmarks; each face is warped onto the ArcFace template at the
model's input size (tfface.data.alignment: the code and rule of tools.align), and embedded with the model's flip
mode (tfface.embedders). Coordinates are continuous pixels of the photo (x right, y down).

`verify` compares the face nearest each photo's centre (tools.align's choice, so it agrees with models and
thresholds calibrated on tools.align crops). The score is the cosine similarity of the two L2-normalised
embeddings; "same" means score > threshold. The threshold is the model's calibrated one (tfface.calibration:
"best" accuracy by default, or the one at its "far" target), or a number given; a model without a calibration
and no number given raises ConfigError saying so.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from tfface.calibration import Calibration, no_calibration_message, read_calibration
from tfface.data import detection
from tfface.data.alignment import alignment_matrix, arcface_template, warp_similarity
from tfface.data.image_io import DEFAULT_MAX_PIXELS, read_rgb
from tfface.embedders import Embedder, load_embedder
from tfface.errors import ConfigError

Photo = Union[str, Path, np.ndarray]
THRESHOLD_CHOICES = ("best", "far")


@dataclass(frozen=True)
class Face:
    """One face of a photo: embedding [D] float32 (unit norm), box [4] (x0, y0, x1, y1), landmarks [5, 2] (x, y;
    left eye, right eye, nose tip, left and right mouth corner), score: the detector's confidence in [0, 1]."""

    embedding: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    score: float


@dataclass(frozen=True)
class Verification:
    """score: cosine similarity (None when a photo has no face); same: score > threshold (None likewise);
    faces: the number of faces found in each photo; missing: "A", "B" or "A and B" for photos without a face."""

    score: Optional[float]
    threshold: float
    same: Optional[bool]
    faces: tuple
    missing: str = ""


class FaceAligner:
    """Photos -> faces (MTCNN, tfface.data.detection) -> crops warped onto the ArcFace template at `input_size`
    (tfface.data.alignment: the code and rule of tools.align), without a model (serving.client --align uses it).

    Args:
      input_size: (H, W) of the crops: 112 x 112, 112 x 96 or either scaled.
      min_face_size, max_side, device: the detector's (tfface.data.detection.FaceDetector).
      max_pixels: image files with more pixels are refused.
    """

    def __init__(self, input_size, min_face_size: int = 20, max_side: Optional[int] = detection.DEFAULT_MAX_SIDE,
                 device: str = "CPU:0", max_pixels: int = DEFAULT_MAX_PIXELS, detector=None):
        self.input_size = tuple(int(size) for size in input_size)
        try:
            arcface_template(self.input_size)
        except ValueError:
            raise ConfigError(f"input {list(self.input_size)} has no ArcFace template (112x112, 112x96 or either "
                              f"scaled)") from None
        self.max_pixels = max_pixels
        self.detector = detector or detection.FaceDetector(min_face_size=min_face_size, max_side=max_side,
                                                           device=device)

    def read(self, photo: Photo) -> np.ndarray:
        """uint8 RGB [H, W, 3] of a file path (UnreadableImageError names a bad file) or of an array."""
        if isinstance(photo, (str, Path)):
            return read_rgb(photo, max_pixels=self.max_pixels)
        image = np.asarray(photo)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a photo array must be uint8 RGB [H, W, 3], got {image.dtype} {list(image.shape)}")
        return image

    def detect(self, images: Sequence[np.ndarray]) -> List[List[detection.DetectedFace]]:
        """Every face of each uint8 RGB image, most confident first."""
        return self.detector.detect_batch(list(images))

    def align(self, image: np.ndarray, faces: Sequence[detection.DetectedFace]) -> np.ndarray:
        """uint8 crops [F, H, W, 3] of the faces, warped onto the ArcFace template at `input_size`."""
        crops = [warp_similarity(image, alignment_matrix(face.landmarks, self.input_size), self.input_size)
                 for face in faces]
        return np.stack(crops) if crops else np.zeros((0, *self.input_size, 3), np.uint8)

    def central_crops(self, photos: Sequence[Photo]) -> tuple:
        """(per photo the [H, W, 3] crop of its face nearest the centre, tools.align's choice, or None without a
        face; per photo the number of faces found)."""
        images = [self.read(photo) for photo in photos]
        found = self.detect(images)
        crops = []
        for image, faces in zip(images, found):
            face = detection.central_face(faces, *image.shape[:2])
            crops.append(None if face is None else self.align(image, [face])[0])
        return crops, [len(faces) for faces in found]


class FaceAnalyzer:
    """Detect, align and embed faces in photos with one model (see the module docstring).

    Args:
      model: a SavedModel folder or model base path, a .tflite or an .onnx file (tfface.embedders), or an Embedder.
      threshold: "best" or "far" (the model's calibrated thresholds, tfface.calibration) or a cosine similarity.
      flip: fuse each face's embedding with its mirror's; None: as the model was calibrated (sum when it was not).
      The other arguments are FaceAligner's.
    """

    def __init__(self, model: Union[str, Path, Embedder], threshold: Union[str, float] = "best",
                 flip: Optional[bool] = None, min_face_size: int = 20,
                 max_side: Optional[int] = detection.DEFAULT_MAX_SIDE, device: str = "CPU:0",
                 max_pixels: int = DEFAULT_MAX_PIXELS, detector=None):
        self.embedder = model if isinstance(model, Embedder) else load_embedder(model, label="model")
        if isinstance(threshold, str) and threshold not in THRESHOLD_CHOICES:
            raise ConfigError(f"threshold must be one of {THRESHOLD_CHOICES} or a number, got {threshold!r}")
        try:
            self.aligner = FaceAligner(self.embedder.input_size, min_face_size, max_side, device, max_pixels,
                                       detector)
        except ConfigError as error:
            raise ConfigError(f"model {self.embedder.path}: {error}") from None
        self.calibration: Optional[Calibration] = read_calibration(self.embedder)
        self._threshold = threshold
        if flip is None:
            flip = self.calibration is None or self.calibration.flip == "sum"
        self.flip = flip

    @property
    def threshold(self) -> float:
        """The decision threshold on cosine similarity; ConfigError when the model has no calibration to give it."""
        if not isinstance(self._threshold, str):
            return float(self._threshold)
        if self.calibration is None:
            raise ConfigError(no_calibration_message(self.embedder.path))
        return self.calibration.threshold if self._threshold == "best" else self.calibration.far_threshold

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """float32 [F, D] unit embeddings of aligned uint8 crops [F, H, W, 3], in the analyzer's flip mode."""
        return self.embedder(crops, flip=self.flip)

    def embed(self, photos: Sequence[Photo]) -> List[List[Face]]:
        """Per photo, its faces (most confident first; [] when it has none), each with its embedding."""
        images = [self.aligner.read(photo) for photo in photos]
        if not images:
            return []
        found = self.aligner.detect(images)
        crops = np.concatenate([self.aligner.align(image, faces) for image, faces in zip(images, found)])
        embeddings = self.embed_crops(crops)
        results, start = [], 0
        for faces in found:
            results.append([Face(embeddings[start + index], face.box, face.landmarks, face.confidence)
                            for index, face in enumerate(faces)])
            start += len(faces)
        return results

    def central_embeddings(self, photos: Sequence[Photo]) -> tuple:
        """(per photo the [D] embedding of its face nearest the centre, or None without a face; per photo the
        number of faces found)."""
        crops, counts = self.aligner.central_crops(photos)
        present = [index for index, crop in enumerate(crops) if crop is not None]
        embeddings = self.embed_crops(np.stack([crops[index] for index in present])) if present else []
        result: List[Optional[np.ndarray]] = [None] * len(crops)
        for index, embedding in zip(present, embeddings):
            result[index] = embedding
        return result, counts

    def verify(self, photo_a: Photo, photo_b: Photo) -> Verification:
        """Whether the central faces of two photos are the same person (see the module docstring)."""
        threshold = self.threshold
        (first, second), counts = self.central_embeddings([photo_a, photo_b])
        missing = " and ".join(name for name, embedding in zip("AB", (first, second)) if embedding is None)
        if missing:
            return Verification(None, threshold, None, tuple(counts), missing)
        score = float(np.dot(first, second))
        return Verification(score, threshold, score > threshold, tuple(counts))
