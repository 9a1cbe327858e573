"""Does the bypass's light estimate follow the real light? Extended Yale B: estimated light direction vs the recorded
light azimuth and elevation (correlations, JSON; scatter plot, PNG).

    python -m experiments.bypass3d.light_correlation --run runs/bypass3d_yaleb --yaleb ../shared/data/yaleb
        [--subjects yaleB35,yaleB36,...] \
        [--out-json experiments/bypass3d/results/bypass3d_yaleb_light.json] [--out-png ...png]

Yale B's index.csv lists path, subject, light_azimuth_deg, light_elevation_deg per image. Each image is resized to
the run's input size as `tools.make_tfrecords --size` does (PIL bilinear) and the branch's Phi_l estimates (l_dx,
l_dy); the estimated azimuth is atan(l_dx) and elevation atan(l_dy), in degrees. Signs: a positive Yale B azimuth
lights the image's left half (the half that is brighter), which is l_dx > 0 in tfface.rendering's convention (light
travelling toward +x); a positive elevation lights from above, l_dy > 0 (travelling down the image).
Reported: Pearson and Spearman correlations over all images and over the lights in front (|azimuth| <= 90); the same
between |estimated| and |recorded| azimuth (how far the light is from the front, whatever its side: a concave face
lit from one side shades like the convex one lit from the other, so a model can get the side wrong and the angle
right); and, for reference, the same for a number that needs no model: the left-minus-right (top-minus-bottom) mean
brightness of the image.
"""
import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image
from scipy import stats

from tfface.data.pipeline import normalize_images
from tfface import atomic, cli
from experiments.bypass3d.restore import load_bypass_run

COLUMNS = ("path", "subject", "light_azimuth_deg", "light_elevation_deg")
FRONT_AZIMUTH = 90.0


def read_index(yaleb_dir, subjects: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """index.csv -> {"path" [N] str, "subject" [N] str, "azimuth", "elevation" [N] degrees}, optionally only the
    given subjects. Errors name the file, the missing columns or the unknown subjects."""
    index = Path(yaleb_dir) / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"Yale B index not found: {index}")
    with index.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{index}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if subjects:
        known = {row["subject"] for row in rows}
        unknown = sorted(set(subjects) - known)
        if unknown:
            raise ValueError(f"--subjects: unknown subject(s) {', '.join(unknown)} in {index}")
        rows = [row for row in rows if row["subject"] in set(subjects)]
    return {
        "path": np.array([row["path"] for row in rows]),
        "subject": np.array([row["subject"] for row in rows]),
        "azimuth": np.array([float(row["light_azimuth_deg"]) for row in rows]),
        "elevation": np.array([float(row["light_elevation_deg"]) for row in rows]),
    }


def load_images(yaleb_dir, paths, size) -> np.ndarray:
    """uint8 [N, H, W, 3] of the listed images resized to size (H, W) with PIL bilinear."""
    images = []
    for path in paths:
        with Image.open(Path(yaleb_dir) / path) as image:
            images.append(np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)))
    return np.stack(images)


def brightness_asymmetry(images) -> Dict[str, np.ndarray]:
    """Model-free reference [N] each: mean of the left half minus the right half, top half minus bottom half."""
    grey = np.asarray(images, np.float64).mean(axis=-1)
    height, width = grey.shape[1:]
    return {
        "horizontal": grey[:, :, : width // 2].mean(axis=(1, 2)) - grey[:, :, width - width // 2 :].mean(axis=(1, 2)),
        "vertical": grey[:, : height // 2].mean(axis=(1, 2)) - grey[:, height - height // 2 :].mean(axis=(1, 2)),
    }


def correlations(estimate, recorded, front) -> Dict[str, float]:
    """Pearson and Spearman correlation of estimate and recorded [N], over all and over `front` [N] bool."""
    def pair(a, b):
        return {"pearson": float(stats.pearsonr(a, b)[0]), "spearman": float(stats.spearmanr(a, b)[0])}

    return {"all": pair(estimate, recorded), "front": pair(estimate[front], recorded[front])}


def estimate_light(run, images, batch_size: int = 64) -> Dict[str, np.ndarray]:
    """uint8 images [N, H, W, 3] -> the branch's {"l_dx", "l_dy", "ambient", "diffuse"} [N] each."""
    parts = []
    for start in range(0, len(images), batch_size):
        normalized = normalize_images(images[start : start + batch_size])
        nuisances = run.branch.nuisances(run.branch.resize(normalized))
        parts.append({key: np.asarray(nuisances[key]) for key in ("l_dx", "l_dy", "ambient", "diffuse")})
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def light_report(run_dir, yaleb_dir, subjects=None, checkpoint=None):
    """-> (report dict, per-image arrays for the plot)."""
    run = load_bypass_run(run_dir, checkpoint)
    index = read_index(yaleb_dir, subjects)
    if len(index["path"]) < 3:
        raise ValueError(f"need at least 3 images to correlate, got {len(index['path'])}")
    images = load_images(yaleb_dir, index["path"], run.input_shape[:2])
    light = estimate_light(run, images)
    azimuth, elevation = np.degrees(np.arctan(light["l_dx"])), np.degrees(np.arctan(light["l_dy"]))
    front = np.abs(index["azimuth"]) <= FRONT_AZIMUTH
    reference = brightness_asymmetry(images)
    report = {
        "run": str(run_dir), "checkpoint": str(run.checkpoint), "yaleb": str(yaleb_dir),
        "images": int(len(azimuth)), "front_images": int(front.sum()),
        "subjects": sorted(set(index["subject"].tolist())),
        "azimuth": correlations(azimuth, index["azimuth"], front),
        "azimuth_magnitude": correlations(np.abs(azimuth), np.abs(index["azimuth"]), front),
        "elevation": correlations(elevation, index["elevation"], front),
        "brightness_reference": {
            "azimuth": correlations(reference["horizontal"], index["azimuth"], front),
            "elevation": correlations(reference["vertical"], index["elevation"], front),
        },
    }
    return report, {"recorded": index, "azimuth": azimuth, "elevation": elevation}


def plot(points, path) -> None:
    """Scatter of estimated vs recorded azimuth and elevation, coloured by the other angle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recorded = points["recorded"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for axis, name, other in ((axes[0], "azimuth", "elevation"), (axes[1], "elevation", "azimuth")):
        scatter = axis.scatter(recorded[name], points[name], c=recorded[other], s=6, cmap="coolwarm")
        axis.set_xlabel(f"recorded light {name} (degrees)")
        axis.set_ylabel(f"estimated light {name} (degrees)")
        r = stats.pearsonr(points[name], recorded[name])[0]
        axis.set_title(f"{name}: Pearson r = {r:.2f}")
        figure.colorbar(scatter, ax=axis, label=f"recorded {other}")
    figure.tight_layout()
    atomic.write_figure(path, figure, dpi=110)
    plt.close(figure)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.bypass3d.light_correlation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="work dir of a trainers.train run with a bypass3d branch")
    parser.add_argument("--yaleb", required=True, help="Yale B folder with index.csv (../shared/data/yaleb)")
    parser.add_argument("--subjects", help="comma-separated subjects to use (default: all), e.g. held-out ones")
    parser.add_argument("--checkpoint", help="checkpoint to load (default: the run's newest)")
    parser.add_argument("--out-json", help="JSON report to write")
    parser.add_argument("--out-png", help="scatter plot to write")
    return parser.parse_args(argv)


@cli.command
def main(argv=None) -> int:
    args = parse_args(argv)
    subjects = [name.strip() for name in args.subjects.split(",") if name.strip()] if args.subjects else None
    report, points = light_report(args.run, args.yaleb, subjects, args.checkpoint)
    cli.emit_json(report, args.out_json)
    if args.out_png:
        plot(points, args.out_png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
