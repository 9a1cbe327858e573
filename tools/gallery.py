"""Who is this? Build a face gallery from folders of photos and search it with other photos.

    python -m tools.gallery build --images people/ --model models/NAME/1 --out G [--append]
    python -m tools.gallery search --gallery G photos/ [--k 5] [--threshold best|far|NUMBER] --out RESULTS/

build: people/ holds one folder per identity (people/<name>/...: every image file under it, recursively). In each
photo the face nearest the centre is detected, aligned (tools.align's code) and embedded by --model; the gallery
G (tfface/gallery.py: float16 embeddings memory-mapped for search, a name and the photo's path per entry, the
model) is written atomically. Building the same folders twice gives identical files. `--append` adds to an
existing G (photos already in it are skipped); without it an existing G is refused. Photos without a face, and
unreadable ones, are listed and left out.

search: every face of every photo under photos/ (or one photo file) is embedded by the gallery's model (or --model)
and compared with all entries by one batched matrix product; RESULTS/matches.csv gets its k best entries
(probe, face, box, rank, name, score, same, photo; `same` is score > the model's calibrated threshold, empty when
the model has none), RESULTS/matches.html shows each face beside its matches' photos. Exit status 2 with one line
on bad input.
"""
import argparse
import base64
import csv
import html
import io
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tfface import atomic, cli  # noqa: E402
from tfface.data.image_io import UnreadableImageError, list_files, read_rgb  # noqa: E402
from tfface.errors import ConfigError, check_output_folder  # noqa: E402
from tfface.faces import FaceAnalyzer  # noqa: E402
from tfface.gallery import MANIFEST, Gallery, append_gallery, write_gallery  # noqa: E402
from tools.annotate import add_detector_arguments, check_detector_arguments  # noqa: E402
from tools.verify import threshold_value  # noqa: E402

BATCH = 32
THUMBNAIL = 96
MATCH_COLUMNS = ("probe", "face", "x0", "y0", "x1", "y1", "detection_score", "rank", "name", "score", "same", "photo")


def analyzer_of(args, model) -> FaceAnalyzer:
    return FaceAnalyzer(model, threshold=getattr(args, "threshold", "best"), min_face_size=args.min_face_size,
                        max_side=args.max_side, device=args.device, max_pixels=args.max_pixels)


def read_photos(paths: List[Path], max_pixels: int):
    """(the readable photos' pixels, their indices in `paths`, lines for the unreadable ones)."""
    images, kept, problems = [], [], []
    for index, path in enumerate(paths):
        try:
            images.append(read_rgb(path, max_pixels=max_pixels))
            kept.append(index)
        except UnreadableImageError as error:
            problems.append(f"  {error}")
    return images, kept, problems


def build(args) -> int:
    root, out = Path(args.images), Path(args.out)
    listed = list_files(root)
    files = [path for path in listed if len(Path(path).parts) >= 2]
    loose = [path for path in listed if len(Path(path).parts) < 2]
    if not files:
        raise ConfigError(f"--images {root}: no photos in identity folders (expected {root}/<name>/<photo>)")
    exists = (out / MANIFEST).is_file()
    if exists and not args.append:
        raise ConfigError(f"--out {out} is already a gallery: add --append to add to it, or pick a new folder")
    if out.exists() and not exists and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not a gallery (not empty)")
    check_output_folder(out, "--out")
    current = Gallery.open(out) if exists else None
    known = set(current.photos) if current is not None else set()
    paths = [(root / path).resolve() for path in files]
    todo = [index for index, path in enumerate(paths) if str(path) not in known]

    analyzer = analyzer_of(args, args.model)
    model = {key: value for key, value in analyzer.embedder.description.items() if key != "metadata"}
    model["flip"] = analyzer.flip
    if current is not None and current.model.get("source") != model["source"]:
        raise ConfigError(f"gallery {out} was built with model {current.model.get('source')}, not {model['source']}")
    embeddings, names, photos, problems = [], [], [], []
    for start in tqdm(range(0, len(todo), BATCH), desc="gallery build", unit="batch", file=sys.stderr):
        batch = [paths[index] for index in todo[start:start + BATCH]]
        images, kept, unreadable = read_photos(batch, args.max_pixels)
        problems += unreadable
        if not images:
            continue
        found, _ = analyzer.central_embeddings(images)
        for position, embedding in zip(kept, found):
            relative = files[todo[start + position]]
            if embedding is None:
                problems.append(f"  {root / relative}: no face found")
                continue
            embeddings.append(embedding)
            names.append(Path(relative).parts[0])
            photos.append(str(paths[todo[start + position]]))
    size = analyzer.embedder.embedding_size
    stacked = np.stack(embeddings) if embeddings else np.zeros((0, size), np.float32)
    if current is not None:
        gallery = append_gallery(out, stacked, names, photos, model)
    elif embeddings:
        gallery = write_gallery(out, stacked, names, photos, model)
    else:
        raise ConfigError(f"--images {root}: no face found in any photo; no gallery written")
    print(f"gallery {out}: {len(gallery)} entries of {len(set(gallery.names))} identities ({len(names)} added, "
          f"{len(paths) - len(todo)} already there, {len(problems)} left out)")
    if loose:
        print(f"{len(loose)} file(s) directly in {root} (not in an identity folder) ignored")
    if problems:
        print("left out:\n" + "\n".join(problems))
    return 0


def thumbnail_uri(pixels: Optional[np.ndarray]) -> str:
    """A data: URI of a PNG thumbnail (longer side THUMBNAIL pixels); '' for None."""
    if pixels is None:
        return ""
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def html_page(gallery_path: Path, rows: List[dict], crops: dict, photos: dict) -> str:
    """One table row per probe face: its aligned crop, then each match's photo with name, score and decision."""
    cells = []
    for (probe, face), matches in rows:
        head = (f'<td><img src="{thumbnail_uri(crops[(probe, face)])}"><br>{html.escape(probe)}<br>face {face}</td>')
        tiles = []
        for match in matches:
            mark = {"1": "same", "0": "different", "": ""}[match["same"]]
            image = photos.get(match["photo"])
            picture = f'<img src="{thumbnail_uri(image)}">' if image is not None else "(photo missing)"
            tiles.append(f'<td class="{mark}">{picture}<br><b>{html.escape(match["name"])}</b><br>'
                         f'{float(match["score"]):.3f} {mark}</td>')
        cells.append(f"<tr>{head}{''.join(tiles)}</tr>")
    return ("<!doctype html><meta charset='utf-8'><title>gallery search</title><style>td{text-align:center;"
            "vertical-align:top;font:12px sans-serif;padding:4px}.same{background:#cfc}.different{background:#fdd}"
            f"</style><h3>{html.escape(str(gallery_path))}: top matches per face</h3><table>{''.join(cells)}</table>")


def search(args) -> int:
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    gallery = Gallery.open(args.gallery)
    probes_root = Path(args.photos)
    if probes_root.is_file():
        relatives, probes_root = [probes_root.name], probes_root.parent
    else:
        relatives = list_files(probes_root)
    if not relatives:
        raise ConfigError(f"{args.photos}: no photos")
    check_output_folder(args.out, "--out")
    analyzer = analyzer_of(args, args.model or gallery.model["source"])
    if analyzer.embedder.embedding_size != gallery.embeddings.shape[1]:
        raise ConfigError(f"--model gives {analyzer.embedder.embedding_size}-d embeddings, the gallery holds "
                          f"{gallery.embeddings.shape[1]}-d")
    threshold = analyzer.threshold if analyzer.calibration is not None or not isinstance(args.threshold, str) else None
    faces, crops, problems = [], {}, []
    for start in range(0, len(relatives), BATCH):
        batch = relatives[start:start + BATCH]
        images, kept, unreadable = read_photos([probes_root / path for path in batch], args.max_pixels)
        problems += unreadable
        for position, image, found in zip(kept, images, analyzer.embed(images)):
            if not found:
                problems.append(f"  {probes_root / batch[position]}: no face found")
            for number, face in enumerate(found):
                faces.append((batch[position], number, face))
                crops[(batch[position], number)] = analyzer.aligner.align(image, [face])[0]
    if not faces:
        raise ConfigError(f"{args.photos}: no face found in any photo")
    indices, scores = gallery.search(np.stack([face.embedding for _, _, face in faces]), k=args.k)
    table, page_rows, needed = [], [], set()
    for (probe, number, face), row_indices, row_scores in zip(faces, indices, scores):
        matches = []
        for rank, (index, score) in enumerate(zip(row_indices, row_scores), start=1):
            same = "" if threshold is None else str(int(score > threshold))
            match = {"probe": probe, "face": number, **dict(zip(("x0", "y0", "x1", "y1"),
                                                                (f"{v:.1f}" for v in face.box))),
                     "detection_score": f"{face.score:.4f}", "rank": rank, "name": gallery.names[index],
                     "score": f"{score:.4f}", "same": same, "photo": gallery.photos[index]}
            matches.append(match)
            needed.add(gallery.photos[index])
        table += matches
        page_rows.append(((probe, number), matches))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MATCH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    out = Path(args.out)
    atomic.write_text(out / "matches.csv", buffer.getvalue())
    photos = {}
    for path in needed:
        try:
            photos[path] = read_rgb(path, max_pixels=args.max_pixels)
        except (UnreadableImageError, FileNotFoundError):
            pass
    atomic.write_text(out / "matches.html", html_page(Path(args.gallery), page_rows, crops, photos))
    note = "" if threshold is not None else " (the model has no calibrated threshold: no same/different column)"
    print(f"{len(faces)} face(s) in {len(relatives)} photo(s) searched among {len(gallery)} entries: "
          f"{out / 'matches.csv'}, {out / 'matches.html'}{note}")
    if problems:
        print("left out:\n" + "\n".join(problems))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.gallery", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    builder = commands.add_parser("build", help="index folders of photos, one per identity")
    builder.add_argument("--images", required=True, help="folder with one sub-folder of photos per identity")
    builder.add_argument("--model", required=True, help="SavedModel folder or base path, .tflite or .onnx file")
    builder.add_argument("--out", required=True, help="gallery folder")
    builder.add_argument("--append", action="store_true", help="add to an existing gallery")
    add_detector_arguments(builder)
    searcher = commands.add_parser("search", help="the best gallery matches of every face in photos")
    searcher.add_argument("photos", help="a photo, or a folder of photos (searched recursively)")
    searcher.add_argument("--gallery", required=True, help="gallery folder (tools.gallery build)")
    searcher.add_argument("--k", type=int, default=5, help="matches per face (default 5)")
    searcher.add_argument("--model", help="the model (default: the one the gallery was built with)")
    searcher.add_argument("--threshold", type=threshold_value, default="best",
                          help="best (default) or far: the model's calibrated thresholds; or a cosine similarity")
    searcher.add_argument("--out", required=True, help="folder for matches.csv and matches.html")
    add_detector_arguments(searcher)
    return parser


@cli.command(name="gallery", errors=(*cli.USER_ERRORS, UnreadableImageError))
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_detector_arguments(args)
    return build(args) if args.command == "build" else search(args)


if __name__ == "__main__":
    sys.exit(main())
