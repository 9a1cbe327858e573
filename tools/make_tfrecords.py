"""Convert face images to tfface TFRecord shards, and describe converted data sets.

    python -m tools.make_tfrecords convert --input DIR_OR_NPZ --out OUT_DIR [--prefix train]
        [--landmarks CSV] [--size H W] [--format png|jpeg] [--shard-size N]
    python -m tools.make_tfrecords describe OUT_DIR [--prefix train] [--verify]

`describe` also takes an insightface folder (train.rec, train.idx, property), which training reads in place
(tfface.data.recordio); --verify then lists its bad records.

Input is either an image-folder tree (one sub-folder per identity, searched recursively; labels follow the sorted
folder names, which are kept as class names), a `tools.align --out` folder (its crop folder and annotation CSV are
picked: the size --size names, else the only one, else 112x112), or an .npz file with `images` uint8 [N, H, W] or
[N, H, W, 3] and `labels` int [N]. Grey images become 3 channels. `--landmarks` is an annotation CSV keyed by path relative to the input folder (for an
.npz, by the row index): `path,x0,y0,...,x{M-1},y{M-1}` in pixels of the original image, optionally
`yaw,pitch,roll` (degrees), `light_*` and `attr_*` columns (see tfface/data/folder.py). `--size H W` resizes every
image and scales its landmarks. Unreadable or corrupt files are reported with their path and skipped; a summary
follows at the end. Input errors print one line and exit with status 2.
"""
import argparse
import statistics
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from tfface import cli
from tfface.data import aligned_folder
from tfface.data.image_io import open_image
from tfface.data.folder import read_annotation_csv, scan_image_folder

# TensorFlow (through tfface.data.schema and .writer) is imported only inside the commands, after the input
# checks: a bad command line then fails fast with one line instead of TensorFlow's start-up log.

IMAGE_FORMATS = ("png", "jpeg")
HISTOGRAM_BINS = 10
HISTOGRAM_WIDTH = 40


class InputError(Exception):
    """A problem with the user's input, reported as one line (exit status 2)."""


@dataclass(frozen=True)
class SourceImage:
    """One image to convert: `source_id` names it, `key` finds its annotation row, `load()` gives RGB pixels."""

    source_id: str
    key: str
    label: int
    load: Callable[[], Image.Image]


def _open_rgb(path: Path) -> Image.Image:
    with open_image(path, path) as image:
        return image.convert("RGB")  # decodes fully, so a truncated file fails here


def folder_sources(root: Path) -> tuple[list[SourceImage], list[str], list[str]]:
    """(images of an identity-folder tree, class names, stray files outside identity folders)."""
    scan = scan_image_folder(root)
    if not scan.files:
        raise InputError(f"no image files found in {root} (expected one sub-folder per identity)")
    sources = [
        SourceImage(source_id=relative, key=relative, label=label, load=lambda path=root / relative: _open_rgb(path))
        for relative, label in scan.files
    ]
    return sources, scan.class_names, scan.stray_files


def npz_sources(path: Path) -> list[SourceImage]:
    """Images of an .npz holding `images` uint8 [N, H, W(, C)] and `labels` int [N]."""
    try:
        with np.load(path) as arrays:
            missing = [key for key in ("images", "labels") if key not in arrays]
            if missing:
                raise InputError(f"{path} lacks arrays {missing} (has {sorted(arrays.keys())})")
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read {path} as .npz: {error}") from error
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise InputError(f"{path}: images must be uint8 [N, H, W] or [N, H, W, 1|3], got {images.dtype} "
                         f"{list(images.shape)}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise InputError(f"{path}: labels must be ints >= 0 of shape [{len(images)}], got {labels.dtype} "
                         f"{list(labels.shape)}")
    if len(images) == 0:
        raise InputError(f"no images in {path}")

    def loader(index: int) -> Callable[[], Image.Image]:
        return lambda: Image.fromarray(np.squeeze(images[index])).convert("RGB")

    return [
        SourceImage(source_id=f"{path.name}#{index}", key=str(index), label=int(label), load=loader(index))
        for index, label in enumerate(labels)
    ]


def _resized(image: Image.Image, annotation: dict, size) -> tuple[Image.Image, dict]:
    """Resize to `size` (H, W), scaling landmarks (continuous pixel coordinates) by the same factors."""
    if size is None or (image.height, image.width) == tuple(size):
        return image, annotation
    scale = np.array([size[1] / image.width, size[0] / image.height], np.float32)
    annotation = dict(annotation)
    if "landmarks" in annotation:
        annotation["landmarks"] = annotation["landmarks"] * scale
    return image.resize((size[1], size[0]), Image.Resampling.BILINEAR), annotation


def align_output_input(args: argparse.Namespace) -> tuple[Path, str | None]:
    """(--input, --landmarks) to convert: for a `tools.align --out` folder, its crop folder of size --size (else its
    only one, else 112x112) and that folder's annotation CSV unless --landmarks is given; any other input as given.
    No such crop folder: InputError naming the choices."""
    source = Path(args.input)
    if not aligned_folder.is_align_output(source):
        return source, args.landmarks
    size = aligned_folder.pick_size(source, args.size)
    if size is None:
        names = [aligned_folder.size_folder(size) for size in aligned_folder.crop_sizes(source)]
        choices = "; ".join(f"--input {source / name} --landmarks {source / name}.csv" for name in names)
        raise InputError(f"{source} is a tools.align output folder with the crop folders {', '.join(names) or 'none'}: "
                         f"convert one of them ({choices or 'run tools.align again'}), or pick one with --size H W")
    crops = source / aligned_folder.size_folder(size)
    csv_path = crops.with_name(crops.name + ".csv")
    landmarks = args.landmarks or (str(csv_path) if csv_path.is_file() else None)
    print(f"{source} is a tools.align output folder: converting {crops}"
          + (f" with the annotations {landmarks}" if landmarks else ""))
    return crops, landmarks


def convert(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.exists():
        raise InputError(f"input not found: {source}")
    if source.is_dir():
        source, args.landmarks = align_output_input(args)
    if source.is_file() and source.suffix != ".npz":
        raise InputError(f"input must be an image folder or an .npz file, got {source}")
    if args.size is not None and min(args.size) < 1:
        raise InputError(f"--size must be two ints >= 1, got {args.size}")
    if args.shard_size < 1:
        raise InputError(f"--shard-size must be >= 1, got {args.shard_size}")
    if source.is_file():
        sources, class_names, skipped = npz_sources(source), None, []
    else:
        sources, class_names, stray = folder_sources(source)
        skipped = [(name, "not inside an identity folder") for name in stray]
    annotations, ignored = read_annotation_csv(args.landmarks) if args.landmarks else ({}, [])
    if ignored:
        print(f"note: ignoring columns {ignored} of {args.landmarks}", file=sys.stderr)
    cli.quiet_tensorflow()
    from tfface.data.schema import make_example
    from tfface.data.writer import ShardedTFRecordWriter

    unannotated = 0
    with ShardedTFRecordWriter(args.out, args.prefix, args.shard_size, class_names=class_names) as writer:
        for item in tqdm(sources, desc=f"convert {source.name}", unit="image", file=sys.stderr):
            try:
                image = item.load()
            except (OSError, ValueError) as error:  # UnreadableImageError is a ValueError
                skipped.append((item.source_id, str(error)))
                tqdm.write(f"skipped {source / item.source_id}: {error}", file=sys.stderr)
                continue
            annotation = annotations.get(item.key, {})
            if annotations and item.key not in annotations:
                unannotated += 1
            image, annotation = _resized(image, annotation, args.size)
            writer.write(make_example(np.asarray(image), item.label, source_id=item.source_id,
                                      image_format=args.format, **annotation))
        description = writer.description()
        if description["num_examples"] == 0:
            raise InputError(f"no readable images in {source} ({len(skipped)} files skipped)")

    print(f"wrote {description['num_examples']} examples of {description['num_classes']} classes in "
          f"{len(description['shards'])} shard(s) to {Path(args.out) / (args.prefix + '.json')}")
    if annotations:
        used = description["num_examples"] - unannotated
        print(f"annotations: {used} of {description['num_examples']} examples have a row in {args.landmarks}; "
              f"{len(annotations) - used} rows matched no converted image")
        if unannotated:
            dropped = sorted(name for name, count in description.get("present_counts", {}).items()
                             if 0 < count < description["num_examples"])
            print(f"warning: {unannotated} example(s) have no row in {args.landmarks}, so no example carries "
                  f"{', '.join(dropped) or 'its annotations'} for training (a feature must be on every example); "
                  f"convert only annotated faces (tools.align --no-face skip leaves out the photos without a "
                  f"detected face, which get no row) or train without them (--set data.features=[])")
    if skipped:
        print(f"skipped {len(skipped)} file(s):")
        for name, reason in skipped:
            print(f"  {source / name}: {reason}")
    return 0


def histogram_lines(class_sizes: list[int]) -> list[str]:
    """A text histogram: number of classes per class-size range, one line per range."""
    low, high = min(class_sizes), max(class_sizes)
    bin_width = -(-(high - low + 1) // HISTOGRAM_BINS)  # ceil: at most HISTOGRAM_BINS bins
    starts = list(range(low, high + 1, bin_width))
    counts = [sum(start <= size < start + bin_width for size in class_sizes) for start in starts]
    labels = [str(start) if bin_width == 1 else f"{start}-{start + bin_width - 1}" for start in starts]
    label_width = max(len(label) for label in labels)
    lines = []
    for label, count in zip(labels, counts):
        bar = "#" * max(1 if count else 0, round(HISTOGRAM_WIDTH * count / max(counts)))
        lines.append(f"  {label:>{label_width}} | " + (f"{bar} " if bar else "") + str(count))
    return lines


def describe_insightface(args: argparse.Namespace) -> int:
    """describe of an insightface folder (train.rec, train.idx, property: tfface.data.recordio, read in place)."""
    from tfface.data import recordio

    data = recordio.InsightfaceFolder(args.out_dir, args.prefix)
    print(f"insightface folder {args.out_dir} ({data.rec_path.name}, {data.idx_path.name}, property), read in place "
          f"by training")
    print(f"examples: {len(data)} image records; classes: {data.num_classes}; image size: "
          f"{data.image_size[0]} x {data.image_size[1]} (h x w)")
    if not args.verify:
        return 0
    result = recordio.scan(args.out_dir, args.prefix)
    print(f"verify: {result.num_examples} record(s) read, {len(result.bad)} bad")
    for record in result.bad:
        print(f"  bad: {record.line()}")
    return 1 if result.bad else 0


def describe(args: argparse.Namespace) -> int:
    cli.quiet_tensorflow()
    from tfface.data.recordio import is_insightface_folder
    from tfface.data.schema import OPTIONAL_FIELDS
    from tfface.data.writer import read_description

    if is_insightface_folder(args.out_dir, args.prefix):
        return describe_insightface(args)
    description = read_description(args.out_dir, args.prefix)
    sizes = [description["class_counts"].get(label, 0) for label in range(description["num_classes"])]
    shapes = description.get("feature_shapes", {})
    present = [name for name in OPTIONAL_FIELDS if description["has"].get(name)]
    partial = [f"{name} ({count} of {description['num_examples']})"
               for name, count in description.get("present_counts", {}).items()
               if count and name not in present]
    print(f"data set {args.prefix!r} in {args.out_dir}")
    print(f"examples: {description['num_examples']} in {len(description['shards'])} shard(s)")
    if sizes:
        print(f"classes: {len(sizes)} (examples per class: min {min(sizes)}, median {statistics.median(sizes):g}, "
              f"max {max(sizes)})")
    else:
        print("classes: 0")
    if description["image_size"]:
        height, width = description["image_size"]
        print(f"image size: {height} x {width} (h x w), {description.get('image_format', '?')}")
    shown = [f"{name} {shapes[name]}" if name in shapes else name for name in present]
    print(f"features: {', '.join(shown) if shown else 'none'}")
    if partial:
        print(f"partial features (not emitted by the reader): {', '.join(partial)}")
    if description.get("class_names"):
        names = description["class_names"]
        print(f"class names: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
    if sizes:
        print("class sizes (number of classes per range of examples per class):")
        print("\n".join(histogram_lines(sizes)))
    return verify_records(args) if args.verify else 0


def verify_records(args: argparse.Namespace) -> int:
    """--verify: every record read and checked (tfface.data.verify); each bad one on a line; 1 when any is bad."""
    from tfface.data import verify

    result = verify.scan(args.out_dir, args.prefix)
    print(f"verify: {sum(result.readable.values())} record(s) read, {len(result.bad)} bad")
    for record in result.bad:
        print(f"  bad: {record.line()}")
    return 1 if result.bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make_tfrecords", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    convert_parser = commands.add_parser("convert", help="convert an image folder or .npz to TFRecord shards")
    convert_parser.add_argument(
        "--input", required=True,
        help="image-folder root (one sub-folder per identity, searched recursively: alice/frontal/01.jpg is alice's), "
             "a tools.align --out folder (its crops and annotation CSV of size --size, else its only size, else 112x112), "
             "or an .npz file (images uint8 [N, H, W(, 3)], labels int [N])")
    convert_parser.add_argument("--out", required=True, help="output folder for shards and <prefix>.json")
    convert_parser.add_argument("--prefix", default="train", help="shard and description name stem (default: train)")
    convert_parser.add_argument(
        "--landmarks", metavar="CSV",
        help="annotation CSV, one row per image: path (relative to --input, or the .npz row index), x0,y0,...,"
             "x{M-1},y{M-1} in pixels of the image, optional yaw,pitch,roll (degrees), light_*, attr_* columns "
             "(tools.align writes one per crop size: OUT/112x112.csv)")
    convert_parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                                help="resize every image, scaling its landmarks (default: keep each image's size)")
    convert_parser.add_argument("--format", choices=IMAGE_FORMATS, default="png",
                                help="stored image encoding (default: png)")
    convert_parser.add_argument("--shard-size", type=int, default=2000, help="examples per shard (default: 2000)")
    cli.add_verbose_argument(convert_parser)
    convert_parser.set_defaults(run=convert)

    describe_parser = commands.add_parser("describe", help="print a summary of a converted data set")
    describe_parser.add_argument("out_dir", help="folder holding <prefix>.json and the shards")
    describe_parser.add_argument("--prefix", default="train", help="data set name stem (default: train)")
    describe_parser.add_argument("--verify", action="store_true",
                                 help="read every record: unreadable ones, missing fields, labels, images")
    cli.add_verbose_argument(describe_parser)
    describe_parser.set_defaults(run=describe)
    return parser


@cli.command(errors=(*cli.USER_ERRORS, InputError), name="make_tfrecords")
def main(argv=None) -> int:
    """Console entry point (tfface-make-tfrecords); returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
