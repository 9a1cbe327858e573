"""LATSE Fig. 1: a PNG grid of input faces, the frontal faces the decoder generates from their embeddings, and the
absolute difference between the two.

    python -m experiments.latse.decoder_grid --work_dir runs/latse_synth_ts_gen --data data/synth --count 8 --out grid.png

Rows, top to bottom: the input image (resized to the decoder's output size), the generated face, |input - generated|;
one column per identity (the first image of each of the first --count classes of --data, read as in evaluation:
the run's resize and centre crop, no flip). The model is the run's trainer rebuilt from its config.yaml with the
weights of --weights (default: the newest checkpoints/epoch-*.weights.h5); its `frontal_decoder` branch draws.
"""
import argparse
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfface import cli  # noqa: E402
from tfface.branches.frontal_decoder import FrontalDecoder  # noqa: E402
from tfface.data.image_io import write_png_atomic  # noqa: E402
from tfface.data.pipeline import denormalize_images, make_dataset  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402
from tfface.builder import restore_trainer  # noqa: E402

PADDING = 2


def grid_image(inputs: np.ndarray, generated: np.ndarray, scale: int = 1) -> np.ndarray:
    """uint8 [N, h, w, 3] inputs and generated faces -> uint8 grid [3 (h s + p) + p, N (w s + p) + p, 3] on white:
    rows input, generated, |input - generated|; each cell scaled `s` times (nearest), p = PADDING pixels apart."""
    if inputs.shape != generated.shape or inputs.ndim != 4 or inputs.dtype != np.uint8 or generated.dtype != np.uint8:
        raise ValueError(f"inputs and generated must be uint8 [N, h, w, 3] of one shape, got {inputs.shape}, "
                         f"{generated.shape}")
    difference = np.abs(inputs.astype(np.int16) - generated.astype(np.int16)).astype(np.uint8)
    count, height, width, _ = inputs.shape
    cell_h, cell_w = height * scale, width * scale
    grid = np.full((3 * (cell_h + PADDING) + PADDING, count * (cell_w + PADDING) + PADDING, 3), 255, np.uint8)
    for row, images in enumerate((inputs, generated, difference)):
        for column, image in enumerate(images):
            top, left = PADDING + row * (cell_h + PADDING), PADDING + column * (cell_w + PADDING)
            grid[top : top + cell_h, left : left + cell_w] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def one_image_per_class(data_dir, prefix: str, count: int, image_size, crop_size) -> np.ndarray:
    """Normalised images [count, H, W, 3]: the first image of each of the first `count` classes of the set."""
    dataset = make_dataset(
        data_dir, prefix=prefix, batch_size=256, training=False, flip=False, image_size=image_size,
        crop_size=crop_size,
    )
    chosen = {}
    for batch in dataset.as_numpy_iterator():
        for image, label in zip(batch["image"], batch["label"]):
            if int(label) < count and int(label) not in chosen:
                chosen[int(label)] = image
        if len(chosen) == count:
            break
    if len(chosen) < count:
        raise ConfigError(f"--data: only {len(chosen)} of the first {count} classes have images in {data_dir}")
    return np.stack([chosen[label] for label in range(count)])


def load_decoder_run(work_dir, weights: Optional[str] = None):
    """(trainer, its FrontalDecoder branch, resolved config) of a training run, with the checkpoint's weights."""
    trainer, config, _ = restore_trainer(work_dir, weights, branch="frontal_decoder")
    decoder = next(branch for branch in trainer.branches if isinstance(branch, FrontalDecoder))
    return trainer, decoder, config


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.latse.decoder_grid",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", required=True, help="training work dir of a run with a frontal_decoder branch")
    parser.add_argument("--data", required=True, help="TFRecord folder to draw the inputs from")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--count", type=int, default=8, help="number of identities (columns)")
    parser.add_argument("--weights", help="a trainer checkpoint (default: the newest of WORK_DIR/checkpoints)")
    parser.add_argument("--scale", type=int, default=1, help="nearest-neighbour enlargement of every cell")
    parser.add_argument("--out", required=True, help="PNG file to write")
    return parser.parse_args(argv)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.count < 1 or args.scale < 1:
        raise ConfigError(f"--count and --scale must be positive, got {args.count} and {args.scale}")
    trainer, decoder, config = load_decoder_run(args.work_dir, args.weights)
    images = one_image_per_class(
        args.data, args.prefix, args.count, config["data"]["image_size"], config["data"]["crop_size"]
    )
    embeddings = trainer.backbone(images, training=False)["embedding"]
    generated = denormalize_images(decoder.generate(embeddings)).numpy()
    inputs = denormalize_images(decoder.target_images(images)).numpy()
    write_png_atomic(args.out, grid_image(inputs, generated, args.scale))  # temporary file, then a rename
    print(f"wrote {args.out}: {args.count} identities, rows input / generated / |difference|")
    return 0


if __name__ == "__main__":
    sys.exit(main())
