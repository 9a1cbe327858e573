"""The folder layout `tools.align --out OUT` writes, for the tools that read it back (make_tfrecords,
import_weights):

    OUT/HxW/<identity>/.../<photo>.png   the crops of each size H x W (pixels), in the input's folder layout
    OUT/HxW.csv                          their annotation CSV (tfface.data.folder's format): 5 points and pose
    OUT/align_report.csv                 per input photo: aligned | centre_crop | skipped
"""
import re
from pathlib import Path

REPORT_NAME = "align_report.csv"
DEFAULT_SIZE = (112, 112)  # ArcFace's input: the crops picked when a reader is not told a size
_SIZE_FOLDER = re.compile(r"(\d+)x(\d+)")


def size_folder(size) -> str:
    """The crop folder's name of size (H, W): "112x96"."""
    return f"{size[0]}x{size[1]}"


def is_align_output(folder) -> bool:
    """True for a folder tools.align wrote (its report lies in it)."""
    return (Path(folder) / REPORT_NAME).is_file()


def crop_sizes(folder) -> list[tuple[int, int]]:
    """The (H, W) of the crop folders of an align output folder, largest first."""
    sizes = [tuple(int(side) for side in match.groups()) for match in
             (_SIZE_FOLDER.fullmatch(path.name) for path in Path(folder).iterdir() if path.is_dir()) if match]
    return sorted(sizes, reverse=True)


def pick_size(folder, size=None):
    """The crop size to read from an align output folder: `size` when given, else its only one, else DEFAULT_SIZE;
    None when the folder has no crops of that size."""
    sizes = crop_sizes(folder)
    wanted = tuple(size) if size is not None else sizes[0] if len(sizes) == 1 else DEFAULT_SIZE
    return wanted if wanted in sizes else None
