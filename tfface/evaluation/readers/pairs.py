"""The pair list every benchmark reader returns, and loading its images."""
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from tfface.data.image_io import UnreadableImageError, open_image


@dataclass(frozen=True)
class PairList:
    """Verification pairs of image files.

    paths1, paths2: P image paths each; issame: bool [P]; folds: int [P] fold id per pair (0-based), or None
    when the benchmark file defines no folds (then evaluation uses contiguous k-fold splits).
    """

    paths1: Tuple[str, ...]
    paths2: Tuple[str, ...]
    issame: np.ndarray
    folds: Optional[np.ndarray] = None

    def __post_init__(self):
        lengths = {len(self.paths1), len(self.paths2), len(self.issame)}
        if self.folds is not None:
            lengths.add(len(self.folds))
        if len(lengths) != 1:
            raise ValueError(f"paths1, paths2, issame and folds must have one length, got {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.issame)

    def __iter__(self) -> Iterator[Tuple[str, str, bool, Optional[int]]]:
        """Yields (path1, path2, issame, fold) per pair; fold is None when the list has no folds."""
        for index in range(len(self)):
            fold = None if self.folds is None else int(self.folds[index])
            yield self.paths1[index], self.paths2[index], bool(self.issame[index]), fold

    def image_index(self) -> Tuple[List[str], np.ndarray, np.ndarray]:
        """Distinct image paths in first-seen order, and int64 indices [P] of each pair's two images into them."""
        position = {}
        for path in (*self.paths1, *self.paths2):
            position.setdefault(path, len(position))
        first = np.array([position[path] for path in self.paths1], dtype=np.int64)
        second = np.array([position[path] for path in self.paths2], dtype=np.int64)
        return list(position), first, second


def decode_image(source, description: str, image_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Decodes an image file path or file object to RGB uint8 [H, W, 3], resized (bilinear) to image_size
    (height, width) when given; an undecodable image raises a ValueError naming `description`."""
    try:
        with open_image(source, description) as image:
            image = image.convert("RGB")
    except UnreadableImageError as error:
        raise ValueError(f"cannot decode {description}: {error.reason}") from None
    if image_size is not None and image.size != (image_size[1], image_size[0]):
        image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def stack_images(images: Sequence[np.ndarray], descriptions: Sequence[str]) -> np.ndarray:
    """Stacks images [H, W, 3] into [N, H, W, 3]; a size mismatch raises an error naming the image."""
    if not images:
        raise ValueError("no images given")
    for image, description in zip(images, descriptions):
        if image.shape != images[0].shape:
            raise ValueError(
                f"{description} has shape {image.shape} but {descriptions[0]} has {images[0].shape}; pass image_size"
            )
    return np.stack(images)


def load_images(paths: Sequence[str], image_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Reads image files as RGB uint8 [N, H, W, 3], resized to image_size (height, width) when given.

    A missing or undecodable file, or (without image_size) images of different sizes, raise an error naming it.
    """
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        images.append(decode_image(path, f"image {path}", image_size))
    return stack_images(images, [f"image {path}" for path in paths])
