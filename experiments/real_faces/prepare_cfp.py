"""CFP through the real-data pipeline: aligned crops, training TFRecords, fold-6/7 pair lists, APRN's mean landmarks.

    python -m experiments.real_faces.prepare_cfp [--cfp ../shared/data/cfp] [--out data/cfp] [--aligned DIR]
        [--lists DIR]

1. `tools.align` (MTCNN, ArcFace 112x112 template) on all 5,600 photos, frontal and profile, into OUT/aligned (skipped
   when OUT/aligned/align_report.csv exists; --aligned names another folder written by tools.align).
2. Where MTCNN found no face, the crop is aligned from the release's hand-marked fiducials instead (`fiducial_points`):
   the visible eye's centre, the nose tip and the visible mouth corner, by the least-squares similarity onto the
   same three points of the template. Detection rates per view and the fallback count go to OUT/alignment.json.
3. Training set: identities 001-300 (folds 0-5), the detector-aligned faces (their 5 points and head pose from
   tools.align) as TFRecords in OUT/train (tools.make_tfrecords convert --landmarks), through a folder of links
   OUT/train_images.
4. Validation and test: fold 6 (identities 301-350, where every setting is chosen) and fold 7 (identities 351-400,
   read once per final row) of the official FP and FF pairs as OUT/fold{6,7}_{FP,FF}.csv over the aligned crops,
   each with a `fold` column of 10 identity-disjoint sub-folds (5 identities each; a pair belongs to its first
   image's identity), so thresholds are chosen by 10-fold cross-validation inside the fold.
5. APRN's l_mean: experiments.aprn.mean_landmarks on OUT/train into OUT/mean_landmarks.json (faces with |yaw| <= 15
   degrees).
6. The papers' conditions (experiments.real_faces.splits, seed 0): OUT/train_noisy20 and OUT/train_noisy40 (20% and
   40% of the training images relabelled to another training identity, the clean label kept as `true_label`) and
   OUT/train_longtail (half of the identities keep 2 images), with their lists LISTS/{noisy20,noisy40,longtail}.csv.
Every step is skipped when its output exists, so the command resumes.
"""
import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from tfface import atomic, cli
from tfface.data.alignment import arcface_template, umeyama, warp_similarity
from tfface.data.image_io import read_rgb, write_png_atomic
from tfface.errors import ConfigError

TRAIN_IDENTITIES = range(1, 301)  # folds 0-5
VALIDATION_FOLD = 6  # identities 301-350: every setting is chosen here
TEST_FOLD = 7  # identities 351-400: read once per final row
FOLD_SIZE = 50  # identities per CFP fold: fold k holds 50k+1 .. 50k+50
SUB_FOLDS = 10
NOISE_PERCENTS = (20, 40)  # LATSE's condition: this share of the training images relabelled
SPLIT_SEED = 0
CROP_SIZE = (112, 112)
# The 30 CFP fiducials follow one half of the face and its midline: 1-9 contour (9 the chin), 10-12 brow, 13-18 the
# eye's contour, 19-23 the nose from its bridge down (22 its tip), 24-25 the nostril, 26 the mouth corner, 27-30 lips.
EYE_POINTS = tuple(range(12, 18))  # 0-based indices of points 13-18
NOSE_TIP = 21
MOUTH_CORNER = 25
TEMPLATE_LEFT = (0, 2, 3)  # template rows: left eye, nose, left mouth corner (image left)
TEMPLATE_RIGHT = (1, 2, 4)


def read_fiducials(path: Path) -> Dict[str, np.ndarray]:
    """fiducials30.csv -> {relative image path: [30, 2] pixels}."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][0] != "path" or len(rows[0]) != 61:
        raise ConfigError(f"{path}: expected a header 'path,x1,y1,...,x30,y30'")
    points = {}
    for line, row in enumerate(rows[1:], start=2):
        try:
            points[row[0]] = np.array(row[1:], np.float64).reshape(30, 2)
        except ValueError:
            raise ConfigError(f"{path}, line {line}: 60 numbers expected after the path") from None
    return points


def fiducial_points(fiducials: np.ndarray) -> tuple:
    """([3, 2] eye centre, nose tip, mouth corner) and the template rows they match (the annotated side)."""
    eye = fiducials[list(EYE_POINTS)].mean(axis=0)
    points = np.stack([eye, fiducials[NOSE_TIP], fiducials[MOUTH_CORNER]])
    rows = TEMPLATE_LEFT if eye[0] < fiducials[NOSE_TIP][0] else TEMPLATE_RIGHT
    return points, rows


def fiducial_matrix(fiducials: np.ndarray, size=CROP_SIZE) -> np.ndarray:
    """The similarity [3, 3] taking the annotated eye, nose tip and mouth corner onto the ArcFace template."""
    points, rows = fiducial_points(fiducials)
    return umeyama(points, arcface_template(size)[list(rows)])


def align(cfp: Path, aligned: Path) -> None:
    if (aligned / "align_report.csv").is_file():
        return
    from tools import align as align_tool

    code = align_tool.main(["--input", str(cfp / "images"), "--out", str(aligned), "--size", *map(str, CROP_SIZE)])
    if code != 0:
        raise ConfigError(f"tools.align on {cfp / 'images'} failed (exit {code})")


def read_report(aligned: Path) -> Dict[str, str]:
    with open(aligned / "align_report.csv", newline="") as handle:
        return {row["path"]: row["status"] for row in csv.DictReader(handle)}


def fallback_alignment(cfp: Path, aligned: Path, statuses: Dict[str, str], summary_path: Path) -> Dict:
    """Aligns every photo MTCNN missed from its fiducials (overwriting tools.align's centre crop); the summary."""
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    fiducials = read_fiducials(cfp / "fiducials30.csv")
    crops = aligned / f"{CROP_SIZE[0]}x{CROP_SIZE[1]}"
    fallback = sorted(path for path, status in statuses.items() if status != "aligned")
    for path in fallback:
        key = f"images/{path}"
        if key not in fiducials:
            raise ConfigError(f"{cfp / 'fiducials30.csv'}: no fiducials for {key}")
        crop = warp_similarity(read_rgb(cfp / key), fiducial_matrix(fiducials[key]), CROP_SIZE)
        write_png_atomic(crops / Path(path).with_suffix(".png"), crop)
    summary = {"photos": len(statuses), "fallback_from_fiducials": fallback}
    for view in ("frontal", "profile"):
        paths = [path for path in statuses if f"/{view}/" in path]
        detected = sum(statuses[path] == "aligned" for path in paths)
        summary[view] = {"photos": len(paths), "detected": detected, "detection_rate": detected / len(paths)}
    atomic.write_json(summary_path, summary)
    return summary


def identity(path: str) -> int:
    """'001/frontal/01.jpg' or 'images/001/...' -> 1."""
    parts = Path(path).parts
    return int(parts[1] if parts[0] == "images" else parts[0])


def training_set(aligned: Path, statuses: Dict[str, str], out: Path) -> None:
    """TFRecords of the detector-aligned faces of identities 001-300, with their 5 points and pose."""
    records = out / "train"
    if (records / "train.json").is_file():
        return
    links = out / "train_images"
    crops = (aligned / f"{CROP_SIZE[0]}x{CROP_SIZE[1]}").resolve()
    with open(aligned / f"{CROP_SIZE[0]}x{CROP_SIZE[1]}.csv", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        annotations = {row[0]: row for row in reader}
    rows = []
    for path, status in sorted(statuses.items()):
        crop = Path(path).with_suffix(".png").as_posix()
        if status != "aligned" or identity(path) not in TRAIN_IDENTITIES or crop not in annotations:
            continue
        link = links / crop
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(crops / crop)
        rows.append(annotations[crop])
    table = out / "train_landmarks.csv"
    atomic.write_text(table, "\n".join(",".join(row) for row in [header, *rows]) + "\n")
    from tools import make_tfrecords

    code = make_tfrecords.main(["convert", "--input", str(links), "--out", str(records), "--landmarks", str(table)])
    if code != 0:
        raise ConfigError(f"tools.make_tfrecords on {links} failed (exit {code})")


def fold_identities(fold: int) -> range:
    """CFP fold k's identities: 50k+1 .. 50k+50."""
    return range(FOLD_SIZE * fold + 1, FOLD_SIZE * (fold + 1) + 1)


def fold_pairs(cfp: Path, aligned: Path, out: Path, fold: int) -> None:
    """OUT/fold<fold>_{FP,FF}.csv: the fold's pairs over the aligned crops, 10 identity-disjoint sub-folds."""
    crops = os.path.relpath(aligned / f"{CROP_SIZE[0]}x{CROP_SIZE[1]}", out)
    identities = fold_identities(fold)
    for protocol in ("FP", "FF"):
        target = out / f"fold{fold}_{protocol}.csv"
        if target.is_file():
            continue
        with open(cfp / f"pairs_{protocol}.csv", newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["fold"]) == fold]
        if len(rows) != 700:
            raise ConfigError(f"{cfp / f'pairs_{protocol}.csv'}: fold {fold} has {len(rows)} pairs, expected 700")
        lines = ["path1,path2,issame,fold"]
        for row in rows:
            first, second = (Path(crops, Path(row[key]).relative_to("images")).with_suffix(".png").as_posix()
                             for key in ("path1", "path2"))
            sub_fold = (identity(row["path1"]) - identities.start) * SUB_FOLDS // len(identities)
            lines.append(f"{first},{second},{row['issame']},{sub_fold}")
        atomic.write_text(target, "\n".join(lines) + "\n")


def mean_landmarks(out: Path) -> None:
    target = out / "mean_landmarks.json"
    if target.is_file():
        return
    from experiments.aprn import mean_landmarks as mean_landmarks_tool

    code = mean_landmarks_tool.main(["--data", str(out / "train"), "--out", str(target)])
    if code != 0:
        raise ConfigError(f"experiments.aprn.mean_landmarks on {out / 'train'} failed (exit {code})")


def condition_splits(out: Path, lists: Path) -> None:
    """Step 6: the label-noise and long-tailed splits of OUT/train and their lists."""
    from experiments.real_faces import splits

    lists.mkdir(parents=True, exist_ok=True)
    for percent in NOISE_PERCENTS:
        if not (out / f"train_noisy{percent}" / "train.json").is_file():
            splits.write_noisy(out / "train", out / f"train_noisy{percent}", lists / f"noisy{percent}.csv",
                               percent / 100, SPLIT_SEED)
    if not (out / "train_longtail" / "train.json").is_file():
        splits.write_long_tail(out / "train", out / "train_longtail", lists / "longtail.csv", SPLIT_SEED)


def prepare(cfp: Path, out: Path, aligned: Optional[Path] = None, lists: Optional[Path] = None) -> Dict:
    """Runs steps 1-6 (each skipped when done); returns the alignment summary. `lists`: where step 6 writes the
    noise and long-tail lists (default OUT)."""
    if not (cfp / "images").is_dir() or not (cfp / "fiducials30.csv").is_file():
        raise ConfigError(f"--cfp: {cfp} is not the CFP folder (images/, fiducials30.csv, pairs_FP.csv)")
    aligned = aligned or out / "aligned"
    out.mkdir(parents=True, exist_ok=True)
    align(cfp, aligned)
    statuses = read_report(aligned)
    summary = fallback_alignment(cfp, aligned, statuses, out / "alignment.json")
    training_set(aligned, statuses, out)
    for fold in (VALIDATION_FOLD, TEST_FOLD):
        fold_pairs(cfp, aligned, out, fold)
    mean_landmarks(out)
    condition_splits(out, lists or out)
    return summary


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.real_faces.prepare_cfp",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", default="../shared/data/cfp", help="the CFP folder (default ../shared/data/cfp)")
    parser.add_argument("--out", default="data/cfp", help="output folder (default data/cfp)")
    parser.add_argument("--aligned", help="a tools.align output folder to use instead of OUT/aligned")
    parser.add_argument("--lists", help="where the noise and long-tail lists go (default OUT)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        summary = prepare(Path(args.cfp), Path(args.out), Path(args.aligned) if args.aligned else None,
                          Path(args.lists) if args.lists else None)
    except (ConfigError, OSError) as error:
        return cli.user_error(error)
    for view in ("frontal", "profile"):
        print(f"{view}: MTCNN found the face in {summary[view]['detected']} of {summary[view]['photos']} photos "
              f"({100 * summary[view]['detection_rate']:.1f}%)")
    print(f"aligned from the fiducials: {len(summary['fallback_from_fiducials'])}; data in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
