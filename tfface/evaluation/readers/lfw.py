"""LFW `pairs.txt` (View 2) reader.

Layout: a header "10 300" (10 folds of 300 matched and 300 mismatched pairs), then per fold 300 matched lines
`name n1 n2` and 300 mismatched lines `name1 n1 name2 n2` (whitespace separated). Images are
`IMAGE_DIR/name/name_0001.jpg` (or .png). A one-number header ("1100", as in pairsDevTrain.txt) means one fold of
that many matched and mismatched pairs. A file without a header is accepted too, with its 3- and 4-field lines
in any order; it then defines no folds. A name is one folder name: one with a path separator, or "." / "..", is
refused, so a pairs file cannot point at images outside IMAGE_DIR.
"""
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from tfface.evaluation.readers.pairs import PairList

IMAGE_EXTENSIONS = (".jpg", ".png")


def _image_path(image_dir: Path, name: str, number: int, location: str, check_files: bool) -> str:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{location}: name {name!r} is not a folder name under {image_dir}")
    candidates = [image_dir / name / f"{name}_{number:04d}{extension}" for extension in IMAGE_EXTENSIONS]
    if not check_files:
        return str(candidates[0])
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"{location}: image not found: {' or '.join(str(path) for path in candidates)}")


def _parse_header(fields: List[str]) -> Optional[Tuple[int, int]]:
    """(n_folds, pairs per fold and kind) if the line is a header, else None."""
    if len(fields) in (1, 2) and all(field.isdigit() for field in fields):
        return (int(fields[0]), int(fields[1])) if len(fields) == 2 else (1, int(fields[0]))
    return None


def read_lfw_pairs(pairs_path, image_dir, check_files: bool = True) -> PairList:
    """Reads an LFW pairs file -> PairList with image paths under `image_dir`, and fold ids when it has a header.

    Malformed lines (and names that are not plain folder names) raise a ValueError naming file and line; with
    `check_files`, a missing image raises a FileNotFoundError naming the expected path.
    """
    pairs_path, image_dir = Path(pairs_path), Path(image_dir)
    if not pairs_path.is_file():
        raise FileNotFoundError(f"LFW pairs file not found: {pairs_path}")
    with open(pairs_path, encoding="utf-8") as handle:
        lines = [(number, line.split()) for number, line in enumerate(handle, start=1) if line.strip()]
    header = _parse_header(lines[0][1]) if lines else None
    if header is not None:
        lines = lines[1:]
    paths1, paths2, issame = [], [], []
    for line_number, fields in lines:
        location = f"{pairs_path}, line {line_number}"
        try:
            if len(fields) == 3:
                names, numbers = (fields[0], fields[0]), (int(fields[1]), int(fields[2]))
            elif len(fields) == 4:
                names, numbers = (fields[0], fields[2]), (int(fields[1]), int(fields[3]))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{location}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {' '.join(fields)!r}"
            ) from None
        paths1.append(_image_path(image_dir, names[0], numbers[0], location, check_files))
        paths2.append(_image_path(image_dir, names[1], numbers[1], location, check_files))
        issame.append(len(fields) == 3)
    if not issame:
        raise ValueError(f"{pairs_path}: no pair lines")
    folds = None
    if header is not None:
        n_folds, per_fold = header
        if len(issame) != 2 * n_folds * per_fold:
            raise ValueError(
                f"{pairs_path}: header promises {n_folds} folds of {per_fold} matched and {per_fold} mismatched "
                f"pairs ({2 * n_folds * per_fold} lines) but the file has {len(issame)} pair lines"
            )
        folds = np.arange(len(issame), dtype=np.int64) // (2 * per_fold)
    return PairList(tuple(paths1), tuple(paths2), np.array(issame, dtype=bool), folds)
