"""Spread of the class-centre norms ||c_k|| across classes, by class-size bucket (center invariant loss, paper 003).

    python -m experiments.regularizers.center_norms runs/softmax_cia                                 # the run's training data
    python -m experiments.regularizers.center_norms runs/softmax_cia --data data/test --sizes-from data/train --edges 1 50 500

c_k is the mean embedding (not L2-normalised) of class k over the embedded set. Classes are grouped by their size
(the examples per class in `--sizes-from`, default the embedded set) into buckets [edge_b, edge_b+1); the default
edges split at the median size. Per bucket and over all classes it prints the number of classes, mean, std, min,
max and range of ||c_k|| and the relative spread std / mean (imbalanced data: small classes have centres nearer the
origin, so softmax gives a large relative spread; the center invariant loss lowers it).
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfface import cli, runs  # noqa: E402
from tfface.data.pipeline import make_dataset  # noqa: E402
from tfface.data.writer import read_description  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402


def class_centers(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(centres [C, D] = per-class mean embeddings, counts [C]); classes without examples get a zero centre."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != (len(embeddings),):
        raise ValueError(f"embeddings must be [N, D] and labels [N], got {embeddings.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    sums = np.zeros((num_classes, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    return sums / np.maximum(counts, 1.0)[:, None], counts


def norm_statistics(norms: np.ndarray) -> Dict[str, float]:
    """classes, mean, std, min, max, range and relative_std (std / mean) of a set of centre norms."""
    return {
        "classes": int(len(norms)),
        "mean": float(norms.mean()),
        "std": float(norms.std()),
        "min": float(norms.min()),
        "max": float(norms.max()),
        "range": float(norms.max() - norms.min()),
        "relative_std": float(norms.std() / norms.mean()) if norms.mean() > 0 else float("nan"),
    }


def default_edges(class_sizes: np.ndarray) -> List[float]:
    """[min, median, max + 1] (two buckets, small and large classes), or [min, max + 1] when all sizes are equal."""
    low, high, median = float(class_sizes.min()), float(class_sizes.max()) + 1, float(np.median(class_sizes))
    return [low, high] if median <= low else [low, median, high]


def center_norm_spread(
    centers: np.ndarray, class_sizes: np.ndarray, edges: Optional[Sequence[float]] = None
) -> List[Dict]:
    """Rows {"bucket": "[lo, hi)" or "all", **norm_statistics} for centres [C, D] and class sizes [C].

    Buckets hold the classes with lo <= size < hi; empty buckets are left out; "all" comes last.
    """
    centers, class_sizes = np.asarray(centers, dtype=np.float64), np.asarray(class_sizes, dtype=np.float64)
    if centers.ndim != 2 or class_sizes.shape != (len(centers),):
        raise ValueError(f"centers must be [C, D] and class_sizes [C], got {centers.shape} and {class_sizes.shape}")
    edges = default_edges(class_sizes) if edges is None else [float(edge) for edge in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be at least two increasing class sizes, got {edges}")
    norms = np.linalg.norm(centers, axis=1)
    rows = []
    for low, high in zip(edges, edges[1:]):
        members = (class_sizes >= low) & (class_sizes < high)
        if members.any():
            rows.append({"bucket": f"[{low:g}, {high:g})", **norm_statistics(norms[members])})
    rows.append({"bucket": "all", **norm_statistics(norms)})
    return rows


def format_rows(rows: List[Dict]) -> str:
    """The rows of center_norm_spread as a text table (norms in embedding units)."""
    names = ("mean", "std", "min", "max", "range", "std/mean")
    lines = [f"{'class size':>14s} {'classes':>7s} " + " ".join(f"{name:>9s}" for name in names)]
    for row in rows:
        lines.append(
            f"{row['bucket']:>14s} {row['classes']:7d} {row['mean']:9.4f} {row['std']:9.4f} {row['min']:9.4f} "
            f"{row['max']:9.4f} {row['range']:9.4f} {row['relative_std']:9.4f}"
        )
    return "\n".join(lines)


def embed_data_set(work_dir, data_dir, prefix: str = "train", batch_size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], labels [N]) of a TFRecord set through a run's trained backbone, in written order.

    Images are resized and centre-cropped as the run's config.yaml says (data.image_size, data.crop_size).
    """
    data_config = runs.read_config(work_dir)["data"]
    run = runs.read_run(work_dir)
    backbone = runs.build_backbone(run, Path(work_dir) / runs.BACKBONE_WEIGHTS)
    crop_size = data_config["crop_size"]
    dataset = make_dataset(
        data_dir, prefix=prefix, batch_size=batch_size, training=False, flip=False,
        image_size=data_config["image_size"] or (None if crop_size else run["input_shape"][:2]),
        crop_size=crop_size,
    )
    embeddings, labels = [], []
    for batch in dataset:
        embeddings.append(backbone(batch["image"], training=False)["embedding"].numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(embeddings), np.concatenate(labels)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.regularizers.center_norms",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", help="a finished training run (run.json, config.yaml, backbone.weights.h5)")
    parser.add_argument("--data", help="TFRecord folder to embed (default: the run's data.train)")
    parser.add_argument("--prefix", default="train", help="data set prefix inside --data")
    parser.add_argument("--sizes-from", help="TFRecord folder whose class counts give the class sizes (default --data)")
    parser.add_argument("--sizes-prefix", default="train", help="data set prefix inside --sizes-from")
    parser.add_argument("--edges", type=float, nargs="+", help="class-size bucket edges (default: median split)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    data_dir = args.data or runs.read_config(args.work_dir)["data"]["train"]
    if not data_dir:
        raise ConfigError(f"{args.work_dir}/config.yaml: data.train is not set; pass --data")
    embeddings, labels = embed_data_set(args.work_dir, data_dir, args.prefix, args.batch_size)
    sizes_dir, sizes_prefix = (args.sizes_from, args.sizes_prefix) if args.sizes_from else (data_dir, args.prefix)
    class_counts = read_description(sizes_dir, sizes_prefix)["class_counts"]
    num_classes = max(int(labels.max()), *class_counts) + 1
    class_sizes = np.zeros(num_classes)
    class_sizes[list(class_counts)] = list(class_counts.values())
    centers, counts = class_centers(embeddings, labels, num_classes)
    present = counts > 0
    rows = center_norm_spread(centers[present], class_sizes[present], args.edges)
    if args.json:
        cli.emit_json(rows)
    else:
        print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
