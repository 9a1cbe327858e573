"""Align face photos: detect the face and its 5 landmarks, warp it onto the ArcFace template.

    python -m tools.align --input DIR --out OUT [--size H W ...] [--no-face crop|skip] [--workers N]
        [--preview PNG] [--min-face-size 20] [--max-side 1024] [--max-pixels N] [--device CPU:0] [--batch 32]

Every file under DIR (recursively) is read and MTCNN (the `mtcnn` package, weights inside it) finds the faces;
the one nearest the image centre is warped by the least-squares similarity transform of its 5 points onto the
ArcFace template, for each `--size` (default: 112 112 and 112 96). Outputs, for each size H x W:

    OUT/HxW/<relative path>.png   the aligned crops, in the input's folder layout (identity folders stay)
    OUT/HxW.csv                   make_tfrecords annotations of the crops: the 5 points mapped into the crop
                                  and the head pose (see tools/annotate.py for the columns)
    OUT/align_report.csv          per input: status (aligned | centre_crop | skipped), faces found, confidence,
                                  detail

An image without a face gets a centre crop (default; counted, listed, and not in the annotation CSVs) or is left
out (`--no-face skip`). Corrupt, empty, huge or non-image files are reported with their path and skipped. Every
output file is written atomically. Detection runs in this process, `--batch` files at a time (images of one
size share MTCNN's network calls); warping, pose fitting and PNG encoding run in
a pool of `--workers` processes while the next chunk is detected. `--preview PNG` draws the first inputs with
their detected points beside their crops.
"""
import argparse
import csv
import io
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw

from tfface.data import detection
from tfface.data.aligned_folder import REPORT_NAME, size_folder
from tfface.data.alignment import (alignment_matrix, arcface_template, centre_crop_matrix, transform_points,
                                   warp_similarity)
from tfface import atomic, cli
from tfface.data.image_io import list_files, write_png_atomic
from tfface.data.landmarks import estimate_pose
from tools.annotate import (Annotation, add_detector_arguments, check_detector_arguments, detect_files,
                            write_annotation_csv)

DEFAULT_SIZES = ((112, 112), (112, 96))
CHUNK_SIZE = 32
PREVIEW_ROWS = 8
PREVIEW_SOURCE_HEIGHT = 160
REPORT_COLUMNS = ("path", "status", "faces", "confidence", "detail")


@dataclass(frozen=True)
class WarpJob:
    """What a worker does for one input: warp `image` by each matrix into OUT/HxW/`output`, fit the pose of
    `landmarks` [5, 2] (None for a centre crop) mapped into each crop."""

    path: str
    output: str
    image: np.ndarray
    matrices: dict  # (H, W) -> [3, 3] source -> crop
    landmarks: np.ndarray | None
    out_dir: str


@dataclass(frozen=True)
class WarpResult:
    """The crops' annotations by size (empty for a centre crop), or the error that stopped the job."""

    path: str
    annotations: dict  # (H, W) -> Annotation
    error: str | None = None


def output_name(relative: str) -> str:
    """The crop's relative path: the input's, with a .png suffix."""
    return PurePosixPath(relative).with_suffix(".png").as_posix()


def warp_job(job: WarpJob) -> WarpResult:
    """Write the crops of one input and annotate them (runs in a worker process)."""
    try:
        crops = {size: warp_similarity(job.image, matrix, size) for size, matrix in job.matrices.items()}
        annotations = {}
        if job.landmarks is not None:
            for size, matrix in job.matrices.items():
                landmarks = transform_points(matrix, job.landmarks)
                pose = estimate_pose(landmarks)
                annotations[size] = Annotation(job.output, landmarks, (pose.yaw, pose.pitch, pose.roll))
        for size, crop in crops.items():
            write_png_atomic(Path(job.out_dir) / size_folder(size) / job.output, crop)
        return WarpResult(job.path, annotations)
    except Exception as error:  # one bad job must not end a long run: report it and go on
        return WarpResult(job.path, {}, error=f"warp failed: {type(error).__name__}: {error}")


def preview_row(image: np.ndarray, landmarks, crops: list[np.ndarray], caption: str) -> Image.Image:
    """One preview strip: the input scaled to PREVIEW_SOURCE_HEIGHT with its points drawn (eyes red, nose green,
    mouth corners cyan), then the crops with `caption` under them."""
    scale = PREVIEW_SOURCE_HEIGHT / image.shape[0]
    source = Image.fromarray(image).resize((max(1, round(image.shape[1] * scale)), PREVIEW_SOURCE_HEIGHT),
                                           Image.Resampling.BOX)
    draw = ImageDraw.Draw(source)
    if landmarks is not None:
        for (x, y), colour in zip(np.asarray(landmarks) * scale, ("red", "red", "lime", "cyan", "cyan")):
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], outline=colour, width=1)
    tiles = [source] + [Image.fromarray(crop) for crop in crops]
    strip = Image.new("RGB", (sum(tile.width for tile in tiles) + 4 * len(tiles), PREVIEW_SOURCE_HEIGHT), "white")
    left = 0
    for tile in tiles:
        strip.paste(tile.convert("RGB"), (left, 0))
        left += tile.width + 4
    crops_top = max(crop.shape[0] for crop in crops) + 4
    ImageDraw.Draw(strip).multiline_text((source.width + 4, crops_top), caption, fill="black", spacing=2)
    return strip


def preview_caption(result, landmarks) -> str:
    """The file name, then the pose (degrees) of an aligned face or the centre-crop note."""
    if landmarks is None:
        return f"{result.path}\nno face: centre crop"
    pose = estimate_pose(landmarks)
    return (f"{result.path}\nconfidence {result.face.confidence:.3f}\n"
            f"yaw {round(pose.yaw)} pitch {round(pose.pitch)} roll {round(pose.roll)}")


def write_preview(path, strips: list[Image.Image]) -> None:
    """Stack the strips vertically into one PNG, written atomically."""
    sheet = Image.new("RGB", (max(strip.width for strip in strips), len(strips) * (PREVIEW_SOURCE_HEIGHT + 4)),
                      "white")
    for row, strip in enumerate(strips):
        sheet.paste(strip, (0, row * (PREVIEW_SOURCE_HEIGHT + 4)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())


def write_report(path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Run:
    """The bookkeeping of one alignment run: report rows, annotations, preview strips."""

    def __init__(self, sizes, out_dir: Path, preview: bool):
        self.sizes = sizes
        self.out_dir = out_dir
        self.report = {}
        self.annotations = {size: [] for size in sizes}
        self.preview = preview
        self.strips = []
        self.outputs = {}

    def job_for(self, result, no_face: str) -> WarpJob | None:
        """Record one detection; return its warp job, or None when the input is skipped."""
        row = {"path": result.path, "status": "skipped", "faces": result.faces_found, "confidence": "", "detail": ""}
        self.report[result.path] = row
        if result.error is not None:
            row["detail"] = result.error
            return None
        output = output_name(result.path)
        if output in self.outputs:
            row["detail"] = f"its output {output} is already taken by {self.outputs[output]}"
            return None
        if result.face is None:
            if no_face == "skip":
                row["detail"] = "no face found"
                return None
            row["status"], landmarks = "centre_crop", None
            matrices = {size: centre_crop_matrix(result.image.shape[:2], size) for size in self.sizes}
        else:
            row["status"], landmarks = "aligned", result.face.landmarks
            row["confidence"] = f"{result.face.confidence:.4f}"
            matrices = {size: alignment_matrix(landmarks, size) for size in self.sizes}
        self.outputs[output] = result.path
        if self.preview and len(self.strips) < PREVIEW_ROWS:
            crops = [warp_similarity(result.image, matrix, size) for size, matrix in matrices.items()]
            self.strips.append(preview_row(result.image, landmarks, crops, preview_caption(result, landmarks)))
        return WarpJob(result.path, output, result.image, matrices, landmarks, str(self.out_dir))

    def collect(self, results: list[WarpResult]) -> None:
        for result in results:
            if result.error is not None:
                self.report[result.path].update(status="skipped", detail=result.error)
                continue
            for size, annotation in result.annotations.items():
                self.annotations[size].append(annotation)


def align(args: argparse.Namespace) -> int:
    root, out_dir = Path(args.input), Path(args.out)
    sizes = [tuple(size) for size in (args.size or DEFAULT_SIZES)]
    for size in sizes:
        arcface_template(size)  # a size of another aspect fails here, before any work
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    files = list_files(root)
    if not files:
        raise ValueError(f"no files found in {root}")
    if out_dir.resolve() == root.resolve() or root.resolve() in out_dir.resolve().parents:
        raise ValueError(f"--out {out_dir} must lie outside --input {root}")
    detector = detection.FaceDetector(min_face_size=args.min_face_size, max_side=args.max_side, device=args.device)
    run = _Run(sizes, out_dir, preview=args.preview is not None)
    detections = detect_files(root, files, detector, args.max_pixels, description=f"align {root.name}",
                              batch_size=args.batch)
    # spawn: the workers must not inherit this process's TensorFlow threads
    pool = multiprocessing.get_context("spawn").Pool(args.workers) if args.workers else None
    try:
        pending = None
        for chunk in _chunks(detections, CHUNK_SIZE):
            jobs = [job for job in (run.job_for(result, args.no_face) for result in chunk) if job is not None]
            if pool is None:
                run.collect([warp_job(job) for job in jobs])
                continue
            if pending is not None:
                run.collect(pending.get())
            pending = pool.map_async(warp_job, jobs)
        if pending is not None:
            run.collect(pending.get())
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    for size in sizes:
        annotations = sorted(run.annotations[size], key=lambda annotation: annotation.path)
        write_annotation_csv(out_dir / f"{size_folder(size)}.csv", annotations)
    rows = [run.report[path] for path in files]
    write_report(out_dir / REPORT_NAME, rows)
    if run.strips:
        write_preview(args.preview, run.strips)
    return summarise(root, out_dir, sizes, rows)


def summarise(root: Path, out_dir: Path, sizes, rows: list[dict]) -> int:
    """Print the counts and the lists of centre crops and skipped files; exit status 2 when nothing was written."""
    by_status = {status: [row for row in rows if row["status"] == status]
                 for status in ("aligned", "centre_crop", "skipped")}
    written = len(by_status["aligned"]) + len(by_status["centre_crop"])
    print(f"aligned {len(by_status['aligned'])}, centre-cropped {len(by_status['centre_crop'])}, skipped "
          f"{len(by_status['skipped'])} of {len(rows)} files; crops in "
          + ", ".join(str(out_dir / size_folder(size)) for size in sizes))
    if by_status["centre_crop"]:
        print(f"no face found, unaligned centre crop (no landmarks) written for {len(by_status['centre_crop'])} "
              "image(s); --no-face skip leaves them out, as training data should:")
        print("\n".join(f"  {root / row['path']}" for row in by_status["centre_crop"]))
    if by_status["skipped"]:
        print(f"skipped {len(by_status['skipped'])} file(s):")
        print("\n".join(f"  {root / row['path']}: {row['detail']}" for row in by_status["skipped"]))
    if written == 0:
        print(f"align: error: no image of {root} was aligned or cropped", file=sys.stderr)
        return cli.EXIT_INPUT_ERROR
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True,
                        help="folder of photos, searched recursively (symlinked folders followed); its sub-folders "
                             "(one per identity for training) are kept in the output")
    parser.add_argument("--out", required=True,
                        help="output folder: OUT/HxW/ crops per size, OUT/HxW.csv their 5 points and pose (the "
                             "make_tfrecords --landmarks CSV), OUT/align_report.csv")
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="crop size, repeatable: 112 112 (ArcFace), 112 96, or either scaled "
                             "(default: 112 112 and 112 96)")
    parser.add_argument("--no-face", choices=("crop", "skip"), default="crop",
                        help="a photo without a detected face: an unaligned centre crop with no annotation row "
                             "(crop, the default) or left out (skip: recommended for training data)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="warping processes (0: warp in this process; default: min(4, CPUs) = %(default)s)")
    parser.add_argument("--preview", help="PNG to draw the first inputs, their points and their crops into")
    add_detector_arguments(parser)
    cli.add_verbose_argument(parser)
    return parser


@cli.command(name="align")
def main(argv=None) -> int:
    """Console entry point; returns the exit status (2 with one line on bad input)."""
    cli.quiet_tensorflow(argv)  # MTCNN imports TensorFlow
    args = build_parser().parse_args(argv)
    check_detector_arguments(args)
    return align(args)


if __name__ == "__main__":
    sys.exit(main())
