"""Annotate face images with 5 landmarks and head pose, as a CSV that `tools.make_tfrecords --landmarks` reads.

    python -m tools.annotate --input DIR --out CSV [--reference CSV] [--min-face-size 20] [--max-side 1024]
        [--max-pixels N] [--device CPU:0] [--batch 32]

Every file under DIR (recursively) is read; MTCNN (the `mtcnn` package, weights inside it) finds the faces and the
one nearest the image centre gives the row

    path,x0,y0,...,x4,y4,yaw,pitch,roll

with `path` relative to DIR, the 5 points (left eye, right eye, nose tip, left and right mouth corner; "left" is
the image's left) in continuous pixels of the image, and the pose in degrees from a fit of a generic 3-D face
(conventions in tfface/data/landmarks.py). MTCNN gives 5 points only; no packaged offline model for more
points is pinned. Images without a face get no row and are listed; corrupt, empty, huge or non-image files are
reported with their path and skipped. The CSV is written atomically at the end.

`--reference CSV` (68-point iBUG or 5-point annotations keyed the same way, e.g. ../shared/data/lm300w/landmarks.csv)
also reports the normalised mean error of the detected points against the reference's 5 points, normalised by the
distance between the outer eye corners (68 points) or the eye centres (5 points).
"""
import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tfface.data import detection
from tfface.data.folder import read_annotation_csv
from tfface import atomic, cli
from tfface.data.image_io import DEFAULT_MAX_PIXELS, UnreadableImageError, list_files, read_rgb
from tfface.data.landmarks import (estimate_pose, eye_centre_distance, five_from_68, interocular_distance,
                                   normalised_mean_error)

NME_FAILURE_THRESHOLD = 0.1
DEFAULT_DETECT_BATCH = 32


@dataclass(frozen=True)
class Annotation:
    """One CSV row: `path` relative to the folder, landmarks [K, 2] pixels, pose (yaw, pitch, roll) degrees."""

    path: str
    landmarks: np.ndarray
    pose: tuple[float, float, float]


@dataclass(frozen=True)
class FileDetection:
    """The outcome for one file: its pixels and central face, or the reason it was skipped."""

    path: str
    image: np.ndarray | None = None
    face: detection.DetectedFace | None = None  # None when no face was found
    faces_found: int = 0
    error: str | None = None


def annotation_header(num_points: int) -> list[str]:
    """path, x0, y0, ..., x{K-1}, y{K-1}, yaw, pitch, roll (the make_tfrecords annotation columns)."""
    return ["path", *(f"{axis}{index}" for index in range(num_points) for axis in "xy"), "yaw", "pitch", "roll"]


def write_annotation_csv(path, annotations: list[Annotation], num_points: int = 5) -> None:
    """Write the rows (landmarks with 2 decimals, pose with 2) atomically to `path`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(annotation_header(num_points))
    for row in annotations:
        if row.landmarks.shape != (num_points, 2):
            raise ValueError(f"{row.path}: landmarks must be [{num_points}, 2], got {list(row.landmarks.shape)}")
        writer.writerow([row.path, *(f"{value:.2f}" for value in row.landmarks.reshape(-1)),
                         *(f"{angle:.2f}" for angle in row.pose)])
    atomic.write_text(path, buffer.getvalue())


def detect_files(root, files: list[str], detector, max_pixels: int = DEFAULT_MAX_PIXELS, description="detect",
                 batch_size: int = 1):
    """Yield a FileDetection per file of `root` in order, with a progress bar and a line per skipped file on stderr;
    a bad file never stops the loop. batch_size > 1: the readable images of each run of `batch_size` files go to
    `detector.detect_batch` together (one image at a time again if that call fails, to find the odd one)."""
    root = Path(root)
    progress = tqdm(total=len(files), desc=description, unit="image", file=sys.stderr)
    for start in range(0, len(files), batch_size):
        chunk = []  # (relative, image or None, the reason it was not read)
        for relative in files[start:start + batch_size]:
            try:
                chunk.append((relative, read_rgb(root / relative, max_pixels=max_pixels), None))
            except UnreadableImageError as error:
                tqdm.write(f"skipped {error}", file=sys.stderr)
                chunk.append((relative, None, error.reason))
        images = [image for _, image, _ in chunk if image is not None]
        batch_faces = None
        if batch_size > 1 and len(images) > 1:
            try:
                batch_faces = iter(detector.detect_batch(images))
            except Exception:  # noqa: BLE001 - retried image by image below, where the error is reported
                batch_faces = None
        for relative, image, reason in chunk:
            progress.update()
            if image is None:
                yield FileDetection(relative, error=reason)
                continue
            try:
                faces = next(batch_faces) if batch_faces is not None else detector.detect(image)
            except Exception as error:  # one odd image must not end a long run: report it and go on
                reason = f"detection failed: {type(error).__name__}: {error}"
                tqdm.write(f"skipped {root / relative}: {reason}", file=sys.stderr)
                yield FileDetection(relative, error=reason)
                continue
            yield FileDetection(relative, image=image, face=detection.central_face(faces, *image.shape[:2]),
                                faces_found=len(faces))
    progress.close()


def reference_five_points(reference: dict, keys: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """(5 points [N, 5, 2], normalisers [N], normaliser name) of the reference annotations of `keys`."""
    points = np.stack([reference[key]["landmarks"] for key in keys])
    if points.shape[1] == 68:
        return five_from_68(points), interocular_distance(points), "outer eye corners (68 points)"
    if points.shape[1] == 5:
        return points, eye_centre_distance(points), "eye centres (5 points)"
    raise ValueError(f"reference landmarks must have 68 or 5 points, got {points.shape[1]}")


def nme_report(annotations: list[Annotation], reference: dict) -> list[str]:
    """Lines summarising the normalised mean error of the annotations against `reference` (by path)."""
    keys = [row.path for row in annotations if row.path in reference and "landmarks" in reference[row.path]]
    missed = sorted(key for key in reference if key not in {row.path for row in annotations})
    if not keys:
        return [f"NME: none of the {len(annotations)} annotated images has a reference row"]
    by_path = {row.path: row.landmarks for row in annotations}
    target, normaliser, normaliser_name = reference_five_points(reference, keys)
    errors = normalised_mean_error(np.stack([by_path[key] for key in keys]), target, normaliser)
    return [
        f"NME of the 5 detected points vs the reference over {len(keys)} images (normalised by the distance "
        f"between the {normaliser_name}): mean {errors.mean():.4f}, median {np.median(errors):.4f}, "
        f"90th percentile {np.percentile(errors, 90):.4f}, max {errors.max():.4f}; "
        f"{np.mean(errors > NME_FAILURE_THRESHOLD):.1%} above {NME_FAILURE_THRESHOLD}",
        f"reference images without a detected face (or not read): {len(missed)} of {len(reference)}",
    ]


def annotate(args: argparse.Namespace) -> int:
    root = Path(args.input)
    files = list_files(root)
    if not files:
        raise ValueError(f"no files found in {root}")
    reference = read_annotation_csv(args.reference)[0] if args.reference else None
    detector = detection.FaceDetector(min_face_size=args.min_face_size, max_side=args.max_side, device=args.device)
    annotations, no_face, skipped = [], [], []
    for result in detect_files(root, files, detector, args.max_pixels, description=f"annotate {root.name}",
                               batch_size=args.batch):
        if result.error is not None:
            skipped.append((result.path, result.error))
        elif result.face is None:
            no_face.append(result.path)
        else:
            pose = estimate_pose(result.face.landmarks)
            annotations.append(Annotation(result.path, result.face.landmarks, (pose.yaw, pose.pitch, pose.roll)))
    if not annotations and not no_face:
        raise ValueError(f"no readable images in {root} ({len(skipped)} files skipped)")
    write_annotation_csv(args.out, annotations)

    print(f"wrote {len(annotations)} rows (5 landmarks and pose) to {args.out}")
    if no_face:
        print(f"no face found in {len(no_face)} image(s):")
        print("\n".join(f"  {root / name}" for name in no_face))
    if skipped:
        print(f"skipped {len(skipped)} file(s):")
        print("\n".join(f"  {root / name}: {reason}" for name, reason in skipped))
    if reference is not None:
        print("\n".join(nme_report(annotations, reference)))
    return 0


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """The detection and file-reading options shared with tools.align."""
    parser.add_argument("--min-face-size", type=int, default=20,
                        help="smallest face searched for, in pixels (default: %(default)s)")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="detect on a copy scaled down to this longer side (0: full size; default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="skip images with more pixels than this (default: %(default)s)")
    parser.add_argument("--device", default="CPU:0", help="TensorFlow device for MTCNN (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=DEFAULT_DETECT_BATCH,
                        help="files read and detected together (images of one size share MTCNN's calls; "
                             "1: one at a time; default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="annotate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="annotation CSV to write")
    parser.add_argument("--reference", help="68- or 5-point annotation CSV to measure the landmark error against")
    add_detector_arguments(parser)
    cli.add_verbose_argument(parser)
    return parser


def check_detector_arguments(args: argparse.Namespace) -> None:
    """Turn `--max-side 0` into None and reject bad sizes with one line (before TensorFlow starts)."""
    if args.min_face_size < 12:
        raise ValueError(f"--min-face-size must be >= 12, got {args.min_face_size}")
    if args.max_side != 0 and args.max_side < 12:
        raise ValueError(f"--max-side must be 0 or >= 12, got {args.max_side}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    args.max_side = args.max_side or None


@cli.command(name="annotate")
def main(argv=None) -> int:
    """Console entry point; returns the exit status (2 with one line on bad input)."""
    cli.quiet_tensorflow(argv)  # MTCNN imports TensorFlow
    args = build_parser().parse_args(argv)
    check_detector_arguments(args)
    return annotate(args)


if __name__ == "__main__":
    sys.exit(main())
