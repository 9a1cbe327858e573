"""Robust image-file I/O for the data tools: listing a folder, reading with clear per-file errors, atomic PNG writes.

A bad file (empty, truncated, not an image, too many pixels) raises `UnreadableImageError` naming its path and the
reason, so a tool can report it and go on; `open_image` is the one place every reader opens an image (its size is
checked from the header, before a byte of pixels is decoded). Writes go through `tfface.atomic` (a temporary file beside the target,
renamed into place), so an interrupted run never leaves a half-written output.
"""
import contextlib
import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfface import atomic

DEFAULT_MAX_PIXELS = 40_000_000


class UnreadableImageError(ValueError):
    """A file that cannot be used as an image; str() is "<path>: <reason>"."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def list_files(root) -> list[str]:
    """Every non-hidden file under `root` (recursively, into symlinked folders too), as sorted posix paths relative
    to `root`. A symlink to a folder above it (a loop) is not entered."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"input folder not found: {root}")
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        relative = Path(folder).relative_to(root)
        above = {os.path.realpath(root.joinpath(*relative.parts[:depth])) for depth in range(len(relative.parts) + 1)}
        subfolders[:] = [name for name in subfolders
                         if not name.startswith(".") and os.path.realpath(Path(folder) / name) not in above]
        files += [(relative / name).as_posix() for name in names if not name.startswith(".")]
    return sorted(files)


@contextlib.contextmanager
def open_image(source, name, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """`Image.open(source)` (a path or a binary file object) as a context, its size checked from the header first.
    Raises UnreadableImageError(name, reason) for a non-image, one with no pixels or more than `max_pixels` (PIL's
    decompression-bomb refusal included: a header declaring 20000 x 20000), and for what fails while the body
    decodes it (a truncated file)."""
    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImageError(
                    name, f"too large: {width} x {height} = {width * height} pixels (limit {max_pixels})")
            if width == 0 or height == 0:
                raise UnreadableImageError(name, f"image has no pixels ({width} x {height})")
            yield image
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise UnreadableImageError(name, "not an image file PIL can read") from None
    except Image.DecompressionBombError as error:  # raised by Image.open itself, before the size can be read
        raise UnreadableImageError(name, f"too large: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImageError(name, f"cannot read: {error}") from None


def read_rgb(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3], upright per its EXIF orientation.

    Raises UnreadableImageError for an empty, truncated or non-image file, or one with more than `max_pixels`
    pixels (checked from the header, before decoding).
    """
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as error:
        raise UnreadableImageError(path, f"cannot read: {error}") from None
    if empty:
        raise UnreadableImageError(path, "empty file")
    with open_image(path, path, max_pixels) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def write_png_atomic(path, pixels) -> None:
    """Encode uint8 pixels [H, W] or [H, W, 3] as PNG and write them atomically to `path`."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())
