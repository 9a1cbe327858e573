"""Face alignment: similarity transforms (Umeyama) from 5 landmarks to the ArcFace template, and warping.

Coordinates are continuous pixels (pixel column i covers [i, i + 1), as in `tfface.data.schema`), x right, y down.
A transform is a 3 x 3 homogeneous matrix mapping source (x, y, 1) to target (x, y, 1).

The ArcFace template (insightface's `arcface_dst`) gives the 5 points (left eye, right eye, nose tip, left mouth
corner, right mouth corner; "left" is the image's left) in a 112 x 112 crop; insightface states them in
pixel-index coordinates (pixel centres on integers, as OpenCV's `warpAffine` uses), so they are shifted here by
+0.5 to continuous coordinates. The 112 x 96 (h x w) variant (SphereFace / CosFace crops) is the same face with
8 pixels cut from each side: x - 8.
"""
import numpy as np
from scipy import ndimage

# [5, 2] (x, y), continuous pixels of a 112 x 112 crop
ARCFACE_TEMPLATE_112X112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
) + 0.5
# [5, 2] (x, y), continuous pixels of a 112 x 96 (h x w) crop
ARCFACE_TEMPLATE_112X96 = ARCFACE_TEMPLATE_112X112 - np.array([8.0, 0.0])

_TEMPLATE_ASPECTS = {112 / 112: ARCFACE_TEMPLATE_112X112, 96 / 112: ARCFACE_TEMPLATE_112X96}


def _size_pair(name: str, value) -> tuple[int, int]:
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be (height, width) ints >= 1, got {value!r}")
    return int(pair[0]), int(pair[1])


def arcface_template(output_size=(112, 112)) -> np.ndarray:
    """The 5-point template [5, 2] for an (H, W) crop: 112 x 112, 112 x 96, or either scaled by H / 112."""
    height, width = _size_pair("output_size", output_size)
    for aspect, template in _TEMPLATE_ASPECTS.items():
        if abs(width / height - aspect) < 1e-9:
            return template * (height / 112.0)
    raise ValueError(
        f"output_size must have the aspect (w / h) of 112 x 112 or 112 x 96, e.g. (112, 112), (112, 96), "
        f"(224, 224); got {(height, width)}"
    )


def umeyama(source, target, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) taking `source` [N, D] points onto `target` [N, D].

    Minimises sum_i ||target_i - (s R source_i + t)||^2 over a rotation R (det +1, no reflection), a scale s > 0
    (fixed to 1 when `estimate_scale` is False) and a translation t. Returns the [D + 1, D + 1] homogeneous matrix.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    if source.ndim != 2 or source.shape != target.shape:
        raise ValueError(f"source and target must both be [N, D], got {list(source.shape)} and {list(target.shape)}")
    count, dim = source.shape
    if count < 2:
        raise ValueError(f"need at least 2 point pairs, got {count}")
    if not (np.all(np.isfinite(source)) and np.all(np.isfinite(target))):
        raise ValueError("source and target points must be finite")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = np.mean(np.sum(source_centred**2, axis=1))
    if source_variance <= 1e-12:
        raise ValueError("source points all coincide: the transform is undefined")

    covariance = target_centred.T @ source_centred / count
    left, singular, right_t = np.linalg.svd(covariance)
    signs = np.ones(dim)
    if np.linalg.det(left) * np.linalg.det(right_t) < 0:
        signs[-1] = -1.0  # the best orthogonal map is a reflection: flip the weakest axis instead
    rotation = left @ np.diag(signs) @ right_t
    scale = float(singular @ signs / source_variance) if estimate_scale else 1.0

    matrix = np.eye(dim + 1)
    matrix[:dim, :dim] = scale * rotation
    matrix[:dim, dim] = target_mean - scale * rotation @ source_mean
    return matrix


def transform_points(matrix, points) -> np.ndarray:
    """Apply a [3, 3] homogeneous 2-D transform to points [..., 2]."""
    matrix = np.asarray(matrix, np.float64)
    points = np.asarray(points, np.float64)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def similarity_scale(matrix) -> float:
    """The isotropic scale of a 2-D similarity matrix (output pixels per source pixel)."""
    matrix = np.asarray(matrix, np.float64)
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def _box_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Average `factor` x `factor` pixel blocks; right/bottom remainders are dropped, so x_reduced = x / factor."""
    height, width = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: height * factor, : width * factor].astype(np.float32)
    return blocks.reshape(height, factor, width, factor, -1).mean(axis=(1, 3))


def warp_similarity(image, matrix, output_size) -> np.ndarray:
    """Warp `image` by `matrix` (source -> output, continuous pixels) into an (H, W) crop.

    Args:
      image: uint8 [H_in, W_in] or [H_in, W_in, C].
      matrix: [3, 3] homogeneous similarity (or any invertible affine) transform, source -> output.
      output_size: (H, W) of the crop.
    Returns uint8 [H, W] or [H, W, C]. Bilinear sampling; outside the source is black. When the transform
    shrinks by 2x or more, the source is first box-averaged by the integer factor, so small crops of big photos
    do not alias.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be uint8 [H, W] or [H, W, C], got {image.dtype} {list(image.shape)}")
    height, width = _size_pair("output_size", output_size)
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise ValueError(f"matrix must be a finite invertible [3, 3] transform, got {matrix.tolist()}")

    pixels = image[:, :, None] if image.ndim == 2 else image
    factor = int(np.floor(1.0 / similarity_scale(matrix)))
    if factor >= 2 and min(pixels.shape[:2]) >= factor:
        pixels = _box_reduce(pixels, factor)
        matrix = matrix @ np.diag([factor, factor, 1.0])

    inverse = np.linalg.inv(matrix)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    centres = np.stack([cols + 0.5, rows + 0.5], axis=-1)  # output pixel centres, continuous
    source = transform_points(inverse, centres) - 0.5  # continuous -> pixel-index coordinates
    coordinates = np.stack([source[..., 1], source[..., 0]])  # (row, col) for ndimage
    channels = [
        ndimage.map_coordinates(pixels[:, :, c].astype(np.float32), coordinates, order=1, mode="grid-constant",
                                cval=0.0)
        for c in range(pixels.shape[2])
    ]
    warped = np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
    return warped[:, :, 0] if image.ndim == 2 else warped


def alignment_matrix(landmarks, output_size=(112, 112)) -> np.ndarray:
    """The similarity [3, 3] taking 5 landmarks [5, 2] (continuous pixels) onto the template of `output_size`."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be [5, 2] (left eye, right eye, nose, mouth left, mouth right), "
                         f"got {list(landmarks.shape)}")
    return umeyama(landmarks, arcface_template(output_size))


def centre_crop_matrix(image_size, output_size) -> np.ndarray:
    """The similarity [3, 3] mapping the largest centred region of `output_size`'s aspect onto the crop.

    `image_size` and `output_size` are (H, W); used when no face is found.
    """
    image_height, image_width = _size_pair("image_size", image_size)
    height, width = _size_pair("output_size", output_size)
    scale = max(height / image_height, width / image_width)
    return np.array([
        [scale, 0.0, width / 2 - scale * image_width / 2],
        [0.0, scale, height / 2 - scale * image_height / 2],
        [0.0, 0.0, 1.0],
    ])


def align_face(image, landmarks, output_size=(112, 112)) -> tuple[np.ndarray, np.ndarray]:
    """(the aligned crop uint8 [H, W(, C)], the source -> crop matrix [3, 3]) for 5 landmarks [5, 2]."""
    matrix = alignment_matrix(landmarks, output_size)
    return warp_similarity(image, matrix, output_size), matrix
