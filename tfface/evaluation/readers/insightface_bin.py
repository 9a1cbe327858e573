"""insightface `.bin` verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...).

A `.bin` is a pickle of (list of 2P encoded images (JPEG/PNG bytes), list of P issame flags); images 2i and 2i+1
form pair i. Evaluation uses contiguous k-fold splits (the file defines no folds).

A pickle can run code while it loads, so `.bin` files are read with `BinUnpickler`, which builds no object from a
module: only lists, tuples, bytes and booleans (Python 2 strings come out as bytes). The one global it allows is
`_codecs.encode`, which Python 3 pickles of protocol 0-2 use for bytes.
"""
import io
import pickle
import pickletools
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from tfface.evaluation.readers.pairs import decode_image, stack_images


class BinUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global but `_codecs.encode` (see the module docstring)."""

    ALLOWED = {("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a .bin holds only lists of bytes and bools")
        return super().find_class(module, name)


def check_lengths(data: bytes) -> None:
    """ValueError unless every length the pickle `data` declares (a string's, a frame's) fits in the bytes after it:
    the unpickler allocates a declared length before reading it (2^40 bytes from 21). pickletools reads each
    argument from what is there."""
    stream = io.BytesIO(data)
    for opcode, argument, position in pickletools.genops(stream):
        if opcode.name == "FRAME" and argument > len(data) - stream.tell():
            raise ValueError(f"a frame of {argument} bytes at byte {position}, but only "
                             f"{len(data) - stream.tell()} remain")


def load_bin(path, image_size: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Loads a `.bin` set -> (images uint8 [2P, H, W, 3] RGB, issame bool [P]).

    Pair i is (images[2i], images[2i + 1]). Images are resized (bilinear) to image_size (height, width) when
    given. A file that is not such a pickle (or that names any Python object to build), or an undecodable image,
    raises a ValueError naming file and image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".bin verification set not found: {path}")
    try:
        data = path.read_bytes()
        check_lengths(data)
        content = BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise ValueError(f"{path} is not an insightface .bin pickle: {error}") from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{path}: expected a pickled (images, issame) pair, got {type(content).__name__}")
    encoded, issame = content
    if not isinstance(encoded, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise ValueError(f"{path}: expected a list of images and a list of issame flags")
    if not all(type(flag) in (bool, int) and flag in (0, 1) for flag in issame):
        raise ValueError(f"{path}: issame must be a flat list of booleans")
    issame = np.asarray(issame, dtype=bool)
    if len(encoded) != 2 * len(issame):
        raise ValueError(f"{path}: {len(encoded)} images for {len(issame)} pairs; expected {2 * len(issame)}")
    descriptions = [f"{path}, image {index}" for index in range(len(encoded))]
    for data, description in zip(encoded, descriptions):
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"{description}: expected encoded image bytes, got {type(data).__name__}")
    images = [
        decode_image(io.BytesIO(bytes(data)), description, image_size)
        for data, description in zip(encoded, descriptions)
    ]
    return stack_images(images, descriptions), issame.astype(bool)
