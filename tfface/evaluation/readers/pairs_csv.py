"""Generic verification pairs CSV: `path1,path2,issame` with an optional `fold` column.

A header row naming the columns is optional (without it the columns are in that order). issame is 1/0 or
true/false; fold is a 0-based integer below MAX_FOLDS. Relative paths are resolved against `image_root`, by default
the CSV's folder. A UTF-8 byte order mark (Excel's "CSV UTF-8") is read; a pair listed twice (in either order) is
kept, with a warning on stderr.
"""
import csv
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from tfface.errors import shown
from tfface.evaluation.readers.pairs import PairList

COLUMNS = ("path1", "path2", "issame", "fold")
TRUE_WORDS = ("1", "true", "yes")
FALSE_WORDS = ("0", "false", "no")
MAX_FOLDS = 10_000


def read_pairs_csv(path, image_root=None, check_files: bool = True) -> PairList:
    """Reads a pairs CSV -> PairList (with folds when the file has a fold column).

    Malformed rows raise a ValueError naming file and line; with `check_files` a missing image raises a
    FileNotFoundError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs CSV not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [(line_number, row) for line_number, row in enumerate(csv.reader(handle), start=1) if row]
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = [field.strip().lower() for field in rows[0][1]]
    n_columns = len(rows[0][1])
    if header[0] == COLUMNS[0]:
        if tuple(header) not in (COLUMNS[:3], COLUMNS):
            raise ValueError(f"{path}, line 1: header must be 'path1,path2,issame[,fold]', got {','.join(header)!r}")
        rows = rows[1:]
    elif n_columns not in (3, 4):
        raise ValueError(f"{path}, line {rows[0][0]}: expected 'path1,path2,issame[,fold]', got {rows[0][1]}")
    paths1, paths2, issame, folds = [], [], [], []
    for line_number, row in rows:
        location = f"{path}, line {line_number}"
        if len(row) != n_columns:
            raise ValueError(f"{location}: expected {n_columns} fields like the first row, got {len(row)}")
        same = row[2].strip().lower()
        if same not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"{location}: issame must be 1/0 or true/false, got {shown(row[2])}")
        if n_columns == 4:
            fold = row[3].strip()
            if not (fold.isascii() and fold.isdigit() and len(fold) <= 6 and int(fold) < MAX_FOLDS):
                raise ValueError(f"{location}: fold must be an integer >= 0 and < {MAX_FOLDS}, got {shown(row[3])}")
            folds.append(int(fold))
        paths1.append(_resolve(root, row[0], location, check_files))
        paths2.append(_resolve(root, row[1], location, check_files))
        issame.append(same in TRUE_WORDS)
    if not issame:
        raise ValueError(f"{path}: no pair rows")
    _warn_of_repeats(path, [line_number for line_number, _ in rows], paths1, paths2)
    fold_array: Optional[np.ndarray] = np.array(folds, dtype=np.int64) if n_columns == 4 else None
    return PairList(tuple(paths1), tuple(paths2), np.array(issame, dtype=bool), fold_array)


def _resolve(root: Path, image: str, location: str, check_files: bool) -> str:
    image_path = root / image.strip()
    if check_files and not image_path.is_file():
        raise FileNotFoundError(f"{location}: image not found: {image_path}")
    return str(image_path)


def _warn_of_repeats(path: Path, line_numbers, paths1, paths2) -> None:
    """One stderr line when a pair (its two images in either order) is listed more than once: it would count twice
    in every number of the benchmark."""
    first_line, repeats = {}, []
    for line_number, first, second in zip(line_numbers, paths1, paths2):
        pair = frozenset((first, second))
        if pair in first_line:
            repeats.append((line_number, first_line[pair]))
        else:
            first_line[pair] = line_number
    if repeats:
        print(f"warning: {path}: {len(repeats)} pair(s) listed more than once (first: line {repeats[0][0]} repeats "
              f"line {repeats[0][1]}); each copy counts", file=sys.stderr)
