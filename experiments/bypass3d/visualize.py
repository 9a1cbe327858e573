"""Fig. 3 of 3D-BERL: what the reconstruction bypass of a trained run sees in a few faces, as a PNG grid.

    python -m experiments.bypass3d.visualize --run runs/bypass3d_synth --data data/synth64 [--prefix test] [--count 8]
        [--first 0] [--stride 1] [--checkpoint PATH] --out experiments/bypass3d/results/bypass3d_synth.png

One row per face (`count` examples in written order from `first`, every `stride`-th): input (resized to the map
size), reconstruction I_hat, canonical image I_c, canonical depth shaded by a fixed light from the upper left,
canonical albedo; when the data store them (SynthFaces), the true depth (shaded the same way) and albedo follow.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tfface import cli, rendering
from tfface.data.synth import DEPTH_RANGE
from tfface.data.writer import read_description
from experiments.bypass3d.restore import load_bypass_run, reconstructions

# Fixed light of the shaded depth views: from the upper left (travelling right and down), as (l_dx, l_dy).
VIEW_LIGHT = (0.6, 0.6)
CAPTION_HEIGHT = 14


def shade_depth(depth, K) -> np.ndarray:
    """depth [N, H, W] metres -> [N, H, W, 3] grey in [0, 1]: 0.15 + 0.85 max(0, <l, n>) under VIEW_LIGHT."""
    depth = np.asarray(depth, np.float32)
    normals = rendering.normals_from_depth(depth, K)
    count = depth.shape[0]
    l_dx, l_dy = (np.full(count, value, np.float32) for value in VIEW_LIGHT)
    light = rendering.light_direction(l_dx, l_dy)
    shading = 0.15 + 0.85 * np.asarray(rendering.shading_map(normals, light))
    return np.repeat(shading[..., None], 3, axis=-1)


def true_depth_metres(stored) -> np.ndarray:
    """SynthFaces' stored depth (z - 0.9) / 0.2 in [0, 1] -> z in metres."""
    return DEPTH_RANGE[0] + np.asarray(stored, np.float32) * (DEPTH_RANGE[1] - DEPTH_RANGE[0])


def grid_columns(result, K, has_truth: bool):
    """(caption, [N, m, m, 3] in [0, 1]) per column of the figure."""
    columns = [
        ("input", result["target"]),
        ("reconstruction", result["image"]),
        ("canonical", result["canonical"]),
        ("depth", shade_depth(result["depth"], K)),
        ("albedo", result["albedo"]),
    ]
    if has_truth:
        columns += [("true depth", shade_depth(true_depth_metres(result["data_depth"]), K)),
                    ("true albedo", result["data_albedo"])]
    return columns


def draw_grid(columns, scale: int = 2) -> Image.Image:
    """Tiles [N, m, m, 3] per column -> one PNG image with a caption above each column."""
    count, size = columns[0][1].shape[0], columns[0][1].shape[1] * scale
    canvas = Image.new("RGB", (len(columns) * size, CAPTION_HEIGHT + count * size), "white")
    draw = ImageDraw.Draw(canvas)
    for column, (caption, tiles) in enumerate(columns):
        draw.text((column * size + 3, 1), caption, fill="black")
        for row in range(count):
            pixels = np.round(np.clip(np.asarray(tiles[row], np.float32), 0.0, 1.0) * 255).astype(np.uint8)
            tile = Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
            canvas.paste(tile, (column * size, CAPTION_HEIGHT + row * size))
    return canvas


def make_figure(run_dir, data_dir, prefix="test", count=8, checkpoint=None, first=0, stride=1) -> Image.Image:
    run = load_bypass_run(run_dir, checkpoint)
    has = read_description(data_dir, prefix)["has"]
    has_truth = bool(has.get("depth")) and bool(has.get("albedo"))
    features = ("depth", "albedo") if has_truth else ()
    limit = first + (count - 1) * stride + 1
    batches = list(reconstructions(run, data_dir, prefix, batch_size=32, features=features, limit=limit))
    total = sum(len(batch["target"]) for batch in batches)
    if first >= total:
        raise ValueError(f"--first {first}: {data_dir} has {total} examples under prefix '{prefix}'")
    result = {key: np.concatenate([batch[key] for batch in batches])[first::stride] for key in batches[0]}
    return draw_grid(grid_columns(result, run.branch.intrinsics, has_truth))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.bypass3d.visualize",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="work dir of a trainers.train run with a bypass3d branch")
    parser.add_argument("--data", required=True, help="TFRecord folder (tools.make_tfrecords or tools.synth)")
    parser.add_argument("--prefix", default="test", help="shard prefix in --data (default: test)")
    parser.add_argument("--count", type=int, default=8, help="faces (rows) to draw")
    parser.add_argument("--first", type=int, default=0, help="index of the first example drawn")
    parser.add_argument("--stride", type=int, default=1, help="draw every stride-th example")
    parser.add_argument("--checkpoint", help="checkpoint to load (default: the run's newest)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    return parser.parse_args(argv)


@cli.command
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.count < 1 or args.first < 0 or args.stride < 1:
        print(f"error: need --count >= 1, --first >= 0, --stride >= 1; got {args.count}, {args.first}, {args.stride}",
              file=sys.stderr)
        return 2
    figure = make_figure(args.run, args.data, args.prefix, args.count, args.checkpoint, args.first, args.stride)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
