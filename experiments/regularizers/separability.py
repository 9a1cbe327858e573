"""Inter-class separability of a trained head's class centres (RegularFace, paper 004, Eq. 6 and Table 1).

    python -m experiments.regularizers.separability runs/regularface_softmax        # a work dir: its head.weights.npz
    python -m experiments.regularizers.separability path/to/head.weights.npz --draws 5 --json

Sep_i = max_{j != i} cos(W_i, W_j) over the columns W_i of the head's kernel W [D, C] (arr_0 of head.weights.npz).
Prints mean and std of Sep over the C classes next to the same statistics of a W of the same shape drawn uniformly
from [-1, 1] (the paper's "Random" row), averaged over `--draws` draws. Lower means better separated centres.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfface import cli

ROW_BLOCK = 1024
"""Rows of the cosine matrix computed at a time, so C = 100k classes needs 1024 x C floats, not C x C."""


def separability(kernel: np.ndarray) -> np.ndarray:
    """Sep [C] (cosines in [-1, 1]) of a kernel [D, C] with C >= 2 classes in its columns."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[1] < 2:
        raise ValueError(f"kernel must be [D, C] with C >= 2 classes in its columns, got shape {kernel.shape}")
    norms = np.linalg.norm(kernel, axis=0)
    if np.any(norms == 0):
        raise ValueError(f"kernel has all-zero columns (classes {np.flatnonzero(norms == 0)[:10].tolist()})")
    columns = (kernel / norms).astype(np.float32)
    sep = np.empty(kernel.shape[1], dtype=np.float64)
    for start in range(0, kernel.shape[1], ROW_BLOCK):
        block = columns[:, start : start + ROW_BLOCK].T @ columns
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = -np.inf
        sep[start : start + block.shape[0]] = block.max(axis=1)
    return sep


def random_separability(dim: int, num_classes: int, draws: int = 3, seed: int = 0) -> Tuple[float, float]:
    """(mean, std) of Sep for W ~ U[-1, 1]^{dim x num_classes}, each averaged over `draws` draws."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    stats = [separability(rng.uniform(-1.0, 1.0, size=(dim, num_classes))) for _ in range(draws)]
    return float(np.mean([s.mean() for s in stats])), float(np.mean([s.std() for s in stats]))


def separability_report(kernel: np.ndarray, draws: int = 3, seed: int = 0) -> Dict[str, float]:
    """{"dim", "classes", "mean", "std", "random_mean", "random_std"} for a kernel [D, C]."""
    sep = separability(kernel)
    random_mean, random_std = random_separability(kernel.shape[0], kernel.shape[1], draws, seed)
    return {
        "dim": int(kernel.shape[0]),
        "classes": int(kernel.shape[1]),
        "mean": float(sep.mean()),
        "std": float(sep.std()),
        "random_mean": random_mean,
        "random_std": random_std,
    }


def load_kernel(path) -> np.ndarray:
    """The kernel [D, C] from a work dir (its head.weights.npz), an .npz (arr_0, as the trainer saves) or an .npy."""
    path = Path(path)
    if path.is_dir():
        path = path / "head.weights.npz"
    if not path.is_file():
        raise FileNotFoundError(f"head weights not found: {path}")
    if path.suffix == ".npy":
        kernel = np.load(path)
    else:
        with np.load(path) as archive:
            if "arr_0" not in archive.files:
                raise ValueError(f"{path}: no arr_0 (the head kernel) among {archive.files}")
            kernel = archive["arr_0"]
    if kernel.ndim != 2:
        raise ValueError(f"{path}: the kernel must be [D, C], got shape {kernel.shape}")
    return kernel


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.regularizers.separability",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="a training work dir, its head.weights.npz, or a kernel .npy [D, C]")
    parser.add_argument("--draws", type=int, default=3, help="random-W draws averaged for the reference row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = separability_report(load_kernel(args.weights), args.draws, args.seed)
    if args.json:
        cli.emit_json(report)
    else:
        print(f"W: {report['dim']} x {report['classes']} (embedding size x classes)")
        print(f"{'':10s} {'mean(Sep)':>10s} {'std(Sep)':>10s}")
        print(f"{'trained':10s} {report['mean']:10.4f} {report['std']:10.4f}")
        print(f"{'random':10s} {report['random_mean']:10.4f} {report['random_std']:10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
