"""Import a pretrained ONNX face-embedding network as a tfface run dir.

    python -m tools.import_weights --onnx mobilefacenet.onnx --backbone mobilefacenet --images aligned_faces/ \
        --out runs/mobilefacenet_imported [--option scale=1] [--count 100] [--tolerance 1e-4]

The network (Conv with or without folded batch norm, BatchNormalization, PRelu, Add, Gemm/MatMul, Flatten/Reshape)
is matched onto the tfface backbone NAME (tfface/onnx_import.py says how); a graph that does not fit is refused with
one line naming the first node that does not. Before anything is written, the imported backbone and onnxruntime embed
`--count` faces from `--images` (aligned, the network's input size, RGB; searched recursively; of a
`tools.align --out` folder, the crops of the network's input size); the run dir is written
only when the largest difference of their L2-normalised embeddings is within `--tolerance`. The same faces calibrate
the batch-norm statistics of folded convolutions.

The run dir holds what `train.init_from`, `tools.export`, `serving` and `tools.evaluate` read from a training run:
config.yaml, run.json, backbone.weights.h5, plus import.json (source file, its sha256, the parity measured). It is
written to a temporary folder and renamed, so a refused or interrupted import leaves nothing behind.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

from tfface import cli  # noqa: E402

cli.quiet_tensorflow()  # before TensorFlow's first import

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from tfface import backbones  # noqa: E402
from tfface.data import aligned_folder  # noqa: E402
from tfface.data.image_io import UnreadableImageError, list_files, read_rgb  # noqa: E402
from tfface.errors import ConfigError, check_output_folder  # noqa: E402
from tfface.onnx_import import import_onnx, max_normalised_difference, onnx_embeddings  # noqa: E402
from tfface.training.config import config_hash, load_config, save_config  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.import_weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, help="the ONNX face-embedding network")
    parser.add_argument("--backbone", required=True, help=f"tfface backbone: {', '.join(backbones.available())}")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a backbone option (YAML value), e.g. scale=2 or embedding_size=512; repeatable")
    parser.add_argument("--images", required=True,
                        help="folder of aligned face images for the parity check (searched recursively; a tools.align "
                             "--out folder gives its crops of the network's input size)")
    parser.add_argument("--out", required=True, help="the run dir to write (must not exist)")
    parser.add_argument("--count", type=int, default=100, help="faces to check and calibrate on (default 100)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed |difference| of the normalised embeddings (default 1e-4)")
    cli.add_verbose_argument(parser)
    return parser.parse_args(argv)


def backbone_options(pairs: List[str]) -> dict:
    options = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"--option must be KEY=VALUE, got '{pair}'")
        options[key] = yaml.safe_load(value)
    return options


def read_faces(folder, count: int, size) -> np.ndarray:
    """`count` images spread evenly over the sorted files of `folder`, as normalised float32 [N, H, W, 3]."""
    if not os.path.isdir(folder):
        raise ConfigError(f"--images: folder not found: {folder}")
    if aligned_folder.is_align_output(folder):  # a tools.align --out folder: its crops of the network's size
        if aligned_folder.pick_size(folder, size) is None:
            found = ", ".join(map(aligned_folder.size_folder, aligned_folder.crop_sizes(folder))) or "none"
            raise ConfigError(f"--images: {folder} is a tools.align output folder without "
                              f"{aligned_folder.size_folder(size)} crops (it has {found})")
        folder = os.path.join(folder, aligned_folder.size_folder(size))
    files = [path for path in list_files(folder) if path.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise ConfigError(f"--images: no images in {folder}")
    picks = [files[int(index)] for index in np.linspace(0, len(files) - 1, min(count, len(files)))]
    faces = []
    for path in picks:
        pixels = read_rgb(os.path.join(folder, path))
        if pixels.shape[:2] != tuple(size):
            raise ConfigError(f"--images: {path} is {pixels.shape[0]}x{pixels.shape[1]}, the network takes "
                              f"{size[0]}x{size[1]} aligned faces")
        faces.append(pixels)
    return (np.stack(faces).astype(np.float32) - 127.5) / 128.0


def write_run_dir(out: Path, backbone, name: str, options: dict, report: dict) -> None:
    """config.yaml, run.json, backbone.weights.h5 and import.json into a temporary folder renamed to `out`."""
    config = load_config(None, [f"backbone.name={name}", f"backbone.options={json.dumps(options)}"])
    config.name = out.name
    config.work_dir = str(out)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        save_config(config, str(partial / "config.yaml"))
        run = {
            "backbone": name,
            "input_shape": [int(size) for size in backbone.input_shape[1:]],
            "embedding_size": int(backbone.output["embedding"].shape[-1]),
            "config_hash": config_hash(config),
            "source": report["source"],
        }
        (partial / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        (partial / "import.json").write_text(json.dumps(report, indent=2) + "\n")
        backbone.save_weights(str(partial / "backbone.weights.h5"))
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.time()
    out = Path(args.out)
    try:
        if not os.path.isfile(args.onnx):
            raise ConfigError(f"--onnx: file not found: {args.onnx}")
        if args.count < 1:
            raise ConfigError(f"--count must be a positive integer, got {args.count}")
        if out.exists():
            raise ConfigError(f"--out: {out} exists already (the import writes a new run dir)")
        check_output_folder(out.parent, "--out", args.out)
        options = backbone_options(args.option)
        backbone = backbones.get_backbone(args.backbone, **options)
        faces = read_faces(args.images, args.count, backbone.input_shape[1:3])
        result = import_onnx(args.onnx, backbone, faces)
        ours = np.asarray(backbone(faces, training=False)["embedding"])
        difference = max_normalised_difference(ours, onnx_embeddings(args.onnx, faces))
        if not difference <= args.tolerance:
            raise ConfigError(f"--onnx {args.onnx}: the imported {args.backbone} differs from onnxruntime by "
                              f"{difference:.2e} (> --tolerance {args.tolerance:g}) on {len(faces)} faces; not written")
        report = {
            "source": os.path.abspath(args.onnx),
            "sha256": sha256(args.onnx),
            "backbone": args.backbone,
            "backbone_options": options,
            "onnx_nodes_used": result.used_nodes,
            "layers_set": result.layers,
            "batch_norms_unfolded": len(result.unfolded),
            "check_images": len(faces),
            "max_abs_difference": difference,
            "tolerance": args.tolerance,
        }
        write_run_dir(out, backbone, args.backbone, options, report)
    # ConfigError and OnnxImportError are ValueErrors
    except (ValueError, KeyError, TypeError, UnreadableImageError) as error:
        return cli.user_error(error)
    except OSError as error:
        print(f"error: --out {out}: cannot write: {error}", file=sys.stderr)
        return 2
    print(f"imported {args.onnx} into {args.backbone} ({result.layers} layers, {len(result.unfolded)} folded batch "
          f"norms unfolded); max |diff| of normalised embeddings vs onnxruntime on {len(faces)} faces "
          f"{difference:.2e}; wrote {out} in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
