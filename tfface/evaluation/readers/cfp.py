"""CFP (Celebrities in Frontal-Profile) `Protocol/` reader for cfp_ff and cfp_fp.

Layout under the data set folder:
- `Protocol/Pair_list_F.txt`, `Protocol/Pair_list_P.txt`: lines `id path`, the path relative to `Protocol/`
  (e.g. `1 ../Data/Images/001/frontal/01.jpg`);
- `Protocol/Split/FF|FP/01..10/same.txt|diff.txt`: lines `i,j`. In FF both ids index Pair_list_F; in FP the
  first indexes Pair_list_F and the second Pair_list_P. Each numbered folder is one fold.
"""
import os
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from tfface.evaluation.readers.pairs import PairList

CFP_PROTOCOLS = ("FF", "FP")


def read_cfp_image_list(path: Path, check_files: bool = True) -> Dict[int, str]:
    """`Pair_list_F.txt` / `Pair_list_P.txt` -> {id: image path}, paths resolved against the list's folder."""
    if not path.is_file():
        raise FileNotFoundError(f"CFP image list not found: {path}")
    images = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[0].isdigit():
                raise ValueError(f"{path}, line {line_number}: expected 'id path', got {line.strip()!r}")
            image_path = os.path.normpath(path.parent / fields[1])
            if check_files and not os.path.isfile(image_path):
                raise FileNotFoundError(f"{path}, line {line_number}: image not found: {image_path}")
            images[int(fields[0])] = image_path
    return images


def _read_split_file(split_path: Path, first_images: Dict[int, str], first_list: Path,
                     second_images: Dict[int, str], second_list: Path) -> List[Tuple[str, str]]:
    """`same.txt` / `diff.txt` lines `i,j` -> [(image path of i, image path of j)]."""
    if not split_path.is_file():
        raise FileNotFoundError(f"CFP split file not found: {split_path}")
    pairs = []
    with open(split_path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.strip().split(",")
            if len(fields) != 2 or not all(field.strip().isdigit() for field in fields):
                raise ValueError(f"{split_path}, line {line_number}: expected 'i,j', got {line.strip()!r}")
            first_id, second_id = (int(field) for field in fields)
            for image_id, images, list_path in ((first_id, first_images, first_list),
                                                (second_id, second_images, second_list)):
                if image_id not in images:
                    raise ValueError(f"{split_path}, line {line_number}: id {image_id} is not in {list_path}")
            pairs.append((first_images[first_id], second_images[second_id]))
    return pairs


def read_cfp_pairs(cfp_dir, protocol: str = "FP", check_files: bool = True) -> PairList:
    """Reads the CFP protocol `protocol` ("FF" frontal-frontal or "FP" frontal-profile) -> PairList with folds.

    Folds are the numbered Split folders in increasing order (fold id 0 for `01`); within a fold the same.txt
    pairs come first. Malformed lines and unknown image ids raise a ValueError naming file and line.
    """
    if protocol not in CFP_PROTOCOLS:
        raise ValueError(f"protocol must be one of {CFP_PROTOCOLS}, got {protocol!r}")
    protocol_dir = Path(cfp_dir) / "Protocol"
    frontal_list = protocol_dir / "Pair_list_F.txt"
    second_list = frontal_list if protocol == "FF" else protocol_dir / "Pair_list_P.txt"
    first_images = read_cfp_image_list(frontal_list, check_files)
    second_images = first_images if protocol == "FF" else read_cfp_image_list(second_list, check_files)
    split_dir = protocol_dir / "Split" / protocol
    if not split_dir.is_dir():
        raise FileNotFoundError(f"CFP split folder not found: {split_dir}")
    fold_dirs = sorted(
        (path for path in split_dir.iterdir() if path.is_dir() and path.name.isdigit()), key=lambda path: int(path.name)
    )
    if not fold_dirs:
        raise ValueError(f"{split_dir} has no numbered fold folders (01, 02, ...)")
    paths1, paths2, issame, folds = [], [], [], []
    for fold, fold_dir in enumerate(fold_dirs):
        for file_name, same in (("same.txt", True), ("diff.txt", False)):
            pairs = _read_split_file(fold_dir / file_name, first_images, frontal_list, second_images, second_list)
            paths1.extend(first for first, _ in pairs)
            paths2.extend(second for _, second in pairs)
            issame.extend([same] * len(pairs))
            folds.extend([fold] * len(pairs))
    return PairList(tuple(paths1), tuple(paths2), np.array(issame, dtype=bool), np.array(folds, dtype=np.int64))
