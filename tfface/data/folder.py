"""Image-folder data sets: one sub-folder per identity, plus an optional annotation CSV keyed by relative path.

Annotation CSV (one row per image; every listed value must be a number):

    path,x0,y0,...,x{M-1},y{M-1}[,yaw,pitch,roll][,light_*...][,attr_*...]

- ``path``: the image path relative to the folder root, with "/" separators (e.g. ``alice/001.png``).
- ``x0, y0, ...``: M landmarks in pixels of the original image (continuous coordinates, see `pipeline`).
- ``yaw, pitch, roll``: head pose in degrees (all three or none).
- ``light_*``: light parameters, in column order (e.g. Yale B's ``light_azimuth_deg, light_elevation_deg``).
- ``attr_*``: attributes, in column order.
Other columns are ignored (and reported by `read_annotation_csv`).
"""
import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

POSE_COLUMNS = ("yaw", "pitch", "roll")
_COORDINATE = re.compile(r"([xy])(\d+)")


@dataclass(frozen=True)
class FolderScan:
    """An image-folder tree: `files` (relative posix path, label) in label then path order; `class_names[label]`
    is the identity folder name; `stray_files` lie outside any identity folder."""

    files: list[tuple[str, int]]
    class_names: list[str]
    stray_files: list[str]


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def scan_image_folder(root) -> FolderScan:
    """List every non-hidden file under each identity sub-folder of `root`; labels follow sorted folder names.

    Files are not opened here (a file that is no image is found when it is read).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"input is not a folder: {root}")
    folders = sorted(path for path in root.iterdir() if path.is_dir() and _visible(path))
    files = []
    for label, folder in enumerate(folders):
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and all(not part.startswith(".") for part in relative.parts):
                files.append((relative.as_posix(), label))
    stray = sorted(path.name for path in root.iterdir() if path.is_file() and _visible(path))
    return FolderScan(files=files, class_names=[folder.name for folder in folders], stray_files=stray)


def _landmark_columns(header: list[str], csv_path: Path) -> list[str]:
    """The x0, y0, ..., x{M-1}, y{M-1} columns of `header`, checked to be complete."""
    indices = {axis: sorted(int(m.group(2)) for m in map(_COORDINATE.fullmatch, header) if m and m.group(1) == axis)
               for axis in "xy"}
    count = len(indices["x"])
    if indices["x"] != list(range(count)) or indices["y"] != list(range(count)):
        raise ValueError(
            f"{csv_path}: landmark columns must be x0, y0, ..., x{{M-1}}, y{{M-1}}; "
            f"found x {indices['x']} and y {indices['y']}"
        )
    return [f"{axis}{index}" for index in range(count) for axis in "xy"]


def _number(value: str, csv_path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{csv_path}, line {line}: column {column}: {value!r} is not a number") from None
    if not np.isfinite(number):
        raise ValueError(f"{csv_path}, line {line}: column {column}: {value!r} is not finite")
    return number


def read_annotation_csv(csv_path) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Parse an annotation CSV (format in the module docstring).

    Returns ({relative path: make_example keyword arguments among landmarks [M, 2], pose [3], light [L],
    attributes [A]}, the ignored column names). Raises ValueError naming the file and line on bad content.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"annotation CSV not found: {csv_path}")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        if "path" not in header:
            raise ValueError(f"{csv_path}: the header must have a 'path' column, got {header}")
        landmarks = _landmark_columns(header, csv_path)
        pose = [name for name in POSE_COLUMNS if name in header]
        if pose and len(pose) != 3:
            raise ValueError(f"{csv_path}: pose needs all of yaw, pitch, roll columns, found only {pose}")
        groups = {
            "landmarks": landmarks,
            "pose": pose,
            "light": [name for name in header if name.startswith("light_")],
            "attributes": [name for name in header if name.startswith("attr_")],
        }
        used = {"path", *(name for columns in groups.values() for name in columns)}
        ignored = [name for name in header if name not in used]
        annotations = {}
        for line, row in enumerate(reader, start=2):
            key = PurePosixPath(row["path"].strip().replace("\\", "/")).as_posix()
            if key in annotations:
                raise ValueError(f"{csv_path}, line {line}: path {key!r} is listed twice")
            values = {}
            for field, columns in groups.items():
                if columns:
                    numbers = [_number(row[name], csv_path, line, name) for name in columns]
                    values[field] = np.array(numbers, np.float32)
            if "landmarks" in values:
                values["landmarks"] = values["landmarks"].reshape(-1, 2)
            annotations[key] = values
    return annotations, ignored
