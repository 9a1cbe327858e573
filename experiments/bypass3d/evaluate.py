"""How well the reconstruction bypass of a trained run recovers SynthFaces' known factors (JSON report).

    python -m experiments.bypass3d.evaluate --run runs/bypass3d_synth --data data/synth64 [--prefix test]
        [--train-prefix train] [--out report.json]

Reported, on the examples of --prefix (the canonical maps at the branch's map size, 64x64):
- reconstruction L1 (Eq. 6, pixels in [0, 1]) against the per-pixel mean image of --train-prefix (the baseline that
  knows nothing about the face but its average), and the fraction of pixels where the warp found the surface;
- canonical depth on the face (true depth below the background plane): Unsup3D's scale-invariant depth error
  SIDE = sqrt(mean(D^2) - mean(D)^2), D = log d - log d_true, the mean angle between normals (MAD, degrees) and the
  per-image Pearson correlation of d and d_true; the same for two baselines: a flat depth and the mean true depth of
  --train-prefix;
- light and view: Pearson correlation of the estimated l_dx, l_dy with the true ones, and of the estimated pitch,
  yaw, roll with the true pose.
Needs data with "depth", "albedo", "light" and "pose" (SynthFaces).
"""
import argparse
import math
import sys
from typing import Dict

import numpy as np
import tensorflow as tf

from tfface import cli, rendering
from tfface.data.pipeline import make_dataset
from tfface.data.synth import DEPTH_RANGE
from experiments.bypass3d.restore import load_bypass_run, reconstructions

FEATURES = ("depth", "albedo", "light", "pose")
BACKGROUND_MARGIN = 1e-3  # metres: true depth within this of the far plane is background


def side(depth, true_depth, mask) -> np.ndarray:
    """Per-image scale-invariant depth error: depth, true_depth [N, H, W] (> 0), mask [N, H, W] bool -> [N]."""
    delta = np.where(mask, np.log(depth) - np.log(true_depth), 0.0)
    count = np.maximum(mask.sum(axis=(1, 2)), 1)
    mean = delta.sum(axis=(1, 2)) / count
    mean_square = np.square(delta).sum(axis=(1, 2)) / count
    return np.sqrt(np.maximum(mean_square - np.square(mean), 0.0))


def normal_angle_degrees(depth, true_depth, mask, K) -> np.ndarray:
    """Per-image mean angle (degrees) between the normals of depth and of true_depth on mask -> [N]."""
    normals = np.asarray(rendering.normals_from_depth(np.asarray(depth, np.float32), K))
    true_normals = np.asarray(rendering.normals_from_depth(np.asarray(true_depth, np.float32), K))
    angles = np.degrees(np.arccos(np.clip(np.sum(normals * true_normals, axis=-1), -1.0, 1.0)))
    return np.where(mask, angles, 0.0).sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1)


def masked_correlation(first, second, mask) -> np.ndarray:
    """Per-image Pearson correlation of first and second [N, H, W] over mask -> [N] (0 where either is constant)."""
    values = []
    for a, b, m in zip(first, second, mask):
        a, b = a[m] - a[m].mean(), b[m] - b[m].mean()
        scale = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
        values.append(float(np.sum(a * b)) / scale if scale > 0 else 0.0)
    return np.array(values)


def pearson(first, second) -> float:
    """Pearson correlation of two [N] arrays; 0 when either is constant (it follows nothing)."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(np.corrcoef(first, second)[0, 1])


def train_means(data_dir, prefix: str, map_size: int, input_size) -> Dict[str, np.ndarray]:
    """Per-pixel mean image ([m, m, 3] in [0, 1], the input resized as the branch does) and mean true depth
    ([m, m] metres) of the examples of data_dir/prefix."""
    dataset = make_dataset(data_dir, prefix=prefix, batch_size=64, image_size=input_size, training=False,
                           features=("depth",))
    image_sum, depth_sum, count = 0.0, 0.0, 0
    for batch in dataset:
        resized = tf.image.resize(batch["image"], (map_size, map_size), antialias=True)
        image_sum = image_sum + np.sum((resized.numpy() * 128.0 + 127.5) / 255.0, axis=0)
        depth_sum = depth_sum + np.sum(_metres(batch["depth"].numpy()), axis=0)
        count += int(batch["image"].shape[0])
    return {"image": image_sum / count, "depth": depth_sum / count}


def _metres(stored) -> np.ndarray:
    return DEPTH_RANGE[0] + np.asarray(stored, np.float64) * (DEPTH_RANGE[1] - DEPTH_RANGE[0])


def _depth_scores(depth, true_depth, mask, K) -> Dict[str, float]:
    return {
        "side": float(side(depth, true_depth, mask).mean()),
        "mad_degrees": float(normal_angle_degrees(depth, true_depth, mask, K).mean()),
        "correlation": float(masked_correlation(depth, true_depth, mask).mean()),
    }


def evaluate(run_dir, data_dir, prefix="test", train_prefix="train", checkpoint=None) -> Dict:
    run = load_bypass_run(run_dir, checkpoint)
    size, K = run.branch.map_size, np.asarray(run.branch.intrinsics)
    batches = list(reconstructions(run, data_dir, prefix, features=FEATURES))
    result = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    true_depth = _metres(result["data_depth"])
    if true_depth.shape[1:] != (size, size):
        raise ValueError(f"{data_dir}: stored depth maps are {true_depth.shape[1:]}, the branch's maps {size}x{size}")
    means = train_means(data_dir, train_prefix, size, run.input_shape[:2])
    mask = true_depth < DEPTH_RANGE[1] - BACKGROUND_MARGIN
    depth = result["depth"].astype(np.float64)
    light = result["data_light"]  # k_a, k_d, l_x, l_y, l_z
    pose = result["data_pose"]  # yaw, pitch, roll (degrees)
    angles = np.degrees(result["angles"])  # pitch, yaw, roll
    return {
        "run": str(run_dir), "checkpoint": str(run.checkpoint), "data": str(data_dir), "prefix": prefix,
        "examples": int(depth.shape[0]), "map_size": size,
        "reconstruction_l1": {
            "bypass": float(result["l1"].mean()),
            "mean_image_baseline": float(np.abs(means["image"][None] - result["target"]).mean()),
            "valid_fraction": float(result["valid"].mean()),
        },
        "depth": {
            "face_fraction": float(mask.mean()),
            "bypass": _depth_scores(depth, true_depth, mask, K),
            "flat_baseline": _depth_scores(np.full_like(true_depth, 1.0), true_depth, mask, K),
            "mean_depth_baseline": _depth_scores(np.broadcast_to(means["depth"], true_depth.shape), true_depth,
                                                 mask, K),
        },
        "light_correlation": {
            "l_dx": pearson(result["l_dx"], light[:, 2] / light[:, 4]),
            "l_dy": pearson(result["l_dy"], light[:, 3] / light[:, 4]),
            "ambient": pearson(result["ambient"], light[:, 0]),
            "diffuse": pearson(result["diffuse"], light[:, 1]),
        },
        "pose_correlation": {
            "yaw": pearson(angles[:, 1], pose[:, 0]),
            "pitch": pearson(angles[:, 0], pose[:, 1]),
            "roll": pearson(angles[:, 2], pose[:, 2]),
        },
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.bypass3d.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="work dir of a trainers.train run with a bypass3d branch")
    parser.add_argument("--data", required=True, help="SynthFaces TFRecord folder (python -m tools.synth)")
    parser.add_argument("--prefix", default="test", help="examples to evaluate (default: test)")
    parser.add_argument("--train-prefix", default="train", help="examples of the mean-image baseline (default: train)")
    parser.add_argument("--checkpoint", help="checkpoint to load (default: the run's newest)")
    parser.add_argument("--out", help="JSON file to write (default: print only)")
    return parser.parse_args(argv)


@cli.command
def main(argv=None) -> int:
    args = parse_args(argv)
    report = evaluate(args.run, args.data, args.prefix, args.train_prefix, args.checkpoint)
    cli.emit_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
