"""The papers' toy experiments on real data, reproducing results/toy_*.png and the numbers of README.md (this folder).

    python -m experiments.regularizers.toy     # all three experiments into results/, a few minutes on 2 CPU cores
    python -m experiments.regularizers.toy --out /tmp/toy --epochs-scale 0.1 --skip-orl   # a quick smoke run

(a) center invariant loss (003, Fig. 2 and 5): scikit-learn's digits (1797 grey 8x8 images, 10 classes), a third
    held out per class for test; in training, five classes (5..9) keep a tenth of their samples. LeNet++ with 2-D
    features trained with softmax, then with softmax + CIA from the same initialisation. Plots the test features with
    their class centres and the mean-centre-norm circle; reports test accuracy and the centre-norm spread
    (std / mean of ||c_k|| over classes, by training class size).
(b) exclusive regularization (004, Fig. 4): digits 0, 1, 2 only; softmax against softmax + exclusive regularization
    (W columns projected to unit norm after each step). Plots the test features with the directions of W; reports
    mean(Sep) next to the value for random uniform W of the same size.
(c) exclusive regularization on faces: ORL (40 people, 7 photos each for training), LeNet++ with 64-D features;
    mean(Sep) of softmax's W against softmax + exclusive and against random W of the same size (004, Table 1).

Digits are upsampled and faces downsampled to 16x16 (bilinear; LeNet++ takes any size, and 16x16 keeps the whole run
to a few CPU minutes), grey replicated to 3 channels and normalised as (pixel - 127.5) / 128; batches are in-memory
tf.data dicts {"image", "label"} fed to FaceTrainer.fit (SGD, momentum 0.9, batch 32; rate 0.02, 0.01 for (b),
where 0.02 made softmax's 2-D features diverge).
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tfface import atomic, backbones, heads  # noqa: E402
from tfface.data.pipeline import normalize_images  # noqa: E402
from tfface.regularizers import CenterInvariantLoss, ExclusiveRegularizer  # noqa: E402
from tfface.training import FaceTrainer, Regularizer  # noqa: E402
from experiments.regularizers.center_norms import center_norm_spread, class_centers  # noqa: E402
from experiments.regularizers.separability import random_separability, separability  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ORL = REPO.parent / "shared" / "data" / "orl"
DIGIT_SIZE = 16
FACE_SIZE = 16
MINORITY_DIGITS = (5, 6, 7, 8, 9)


# ----------------------------------------------------------------------------------------------- data
def to_network_input(grey: np.ndarray, size: int) -> np.ndarray:
    """Grey images [N, h, w] with pixels in [0, 255] -> float32 [N, size, size, 3], bilinear, normalised."""
    resized = tf.image.resize(tf.convert_to_tensor(grey, tf.float32)[..., None], (size, size), method="bilinear")
    return normalize_images(tf.repeat(resized, 3, axis=-1)).numpy()


def digit_images(size: int = DIGIT_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images float32 [1797, size, size, 3] normalised, labels int32 [1797])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return to_network_input(digits.images * (255.0 / 16.0), size), digits.target.astype(np.int32)


def orl_images(orl_dir, size: int = FACE_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """AT&T/ORL faces from folders s1..s40 of PNGs as (images [N, size, size, 3] normalised, labels 0..39)."""
    orl_dir = Path(orl_dir)
    subjects = sorted((p for p in orl_dir.glob("s*") if p.is_dir()), key=lambda p: int(p.name[1:]))
    if not subjects:
        raise FileNotFoundError(f"no ORL subject folders s1..s40 in {orl_dir}")
    grey, labels = [], []
    for label, folder in enumerate(subjects):
        for path in sorted(folder.glob("*.png"), key=lambda p: int(p.stem)):
            grey.append(np.asarray(Image.open(path).convert("L"), dtype=np.float32))
            labels.append(label)
    return to_network_input(np.stack(grey), size), np.array(labels, np.int32)


def split_per_class(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): round(test_fraction * n_k) random examples of each class k go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(test_fraction * len(members)))
        test.extend(members[:cut])
        train.extend(members[cut:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def cut_classes(indices: np.ndarray, labels: np.ndarray, classes: Sequence[int], keep: float, seed: int) -> np.ndarray:
    """`indices` with only ceil(keep * n_k) random examples left of each class k in `classes`."""
    rng = np.random.default_rng(seed)
    kept = [index for index in indices if labels[index] not in classes]
    for label in classes:
        members = indices[labels[indices] == label]
        kept.extend(rng.choice(members, size=math.ceil(keep * len(members)), replace=False))
    return np.sort(np.array(kept))


# ----------------------------------------------------------------------------------------------- training
def train_model(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    regularizers: Sequence[Regularizer] = (),
    embedding_size: int = 2,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 0.02,
    seed: int = 0,
) -> FaceTrainer:
    """LeNet++ + softmax head (+ regularizers) trained with SGD (momentum 0.9) on in-memory dict batches.

    The same `seed` gives the same initial weights and batch order, so runs differ only by their regularizers.
    """
    keras.utils.set_random_seed(seed)
    input_shape = images.shape[1:]
    backbone = backbones.get_backbone("lenetpp", input_shape=input_shape, embedding_size=embedding_size)
    trainer = FaceTrainer(backbone, heads.get_head("softmax", num_classes), regularizers=regularizers)
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    trainer.build_all(input_shape)
    dataset = (
        tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
        .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
    )
    trainer.fit(dataset, epochs=epochs, verbose=0, shuffle=False)  # the dataset shuffles
    return trainer


def embed(trainer: FaceTrainer, images: np.ndarray) -> np.ndarray:
    """Embeddings [N, D] (inference mode, not normalised)."""
    return trainer.predict(images, batch_size=256, verbose=0)


def accuracy(trainer: FaceTrainer, features: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the head's plain logits on embeddings [N, D]."""
    logits = trainer.head(features)["plain_logits"].numpy()
    return float(np.mean(logits.argmax(axis=1) == labels))


# ----------------------------------------------------------------------------------------------- plots
COLOURS = plt.get_cmap("tab10").colors


def plot_features(ax, features: np.ndarray, labels: np.ndarray, title: str, centers=None, kernel=None) -> None:
    """2-D features coloured by class; centres as black dots with the mean-norm circle; or W's column directions."""
    for label in np.unique(labels):
        points = features[labels == label]
        ax.scatter(points[:, 0], points[:, 1], s=4, color=COLOURS[label % 10], alpha=0.6, label=str(label))
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], s=30, color="black", zorder=3)
        radius = np.linalg.norm(centers, axis=1).mean()
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, linestyle="--", color="black", linewidth=0.8))
    if kernel is not None:
        reach = np.abs(features).max()
        for label, column in enumerate(kernel.T):
            end = 0.9 * reach * column / np.linalg.norm(column)
            ax.annotate("", xy=end, xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": COLOURS[label], "lw": 2})
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=7)


# ----------------------------------------------------------------------------------------------- experiments
def imbalanced_cia(out_dir: Path, epochs: int = 40, cia_weight: float = 1e-5, seed: int = 0) -> Dict:
    """(a): softmax vs softmax + CIA on digits with five classes cut to a tenth; writes toy_cia.png."""
    images, labels = digit_images()
    train, test = split_per_class(labels, test_fraction=1 / 3, seed=seed)
    train = cut_classes(train, labels, MINORITY_DIGITS, keep=0.1, seed=seed)
    class_sizes = np.bincount(labels[train], minlength=10)
    runs = {"softmax": [], "softmax + CIA": [CenterInvariantLoss(weight=cia_weight, alpha=0.5)]}
    results: Dict = {
        "cia_weight": cia_weight, "epochs": epochs, "train_class_sizes": class_sizes.tolist(),
        "test_examples": int(len(test)), "runs": {},
    }
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, (name, regularizers) in zip(axes, runs.items()):
        trainer = train_model(images[train], labels[train], 10, regularizers, epochs=epochs, seed=seed)
        features = embed(trainer, images[test])
        centers, _ = class_centers(features, labels[test], 10)
        spread = center_norm_spread(centers, class_sizes)
        minority = np.isin(labels[test], MINORITY_DIGITS)
        results["runs"][name] = {
            "test_accuracy": accuracy(trainer, features, labels[test]),
            "minority_test_accuracy": accuracy(trainer, features[minority], labels[test][minority]),
            "center_norm_spread": spread,
        }
        overall = spread[-1]
        plot_features(
            ax, features, labels[test], centers=centers,
            title=f"{name}: test acc {results['runs'][name]['test_accuracy']:.3f}, "
            f"||c|| std/mean {overall['relative_std']:.3f}",
        )
    axes[0].legend(markerscale=3, fontsize=7, title="digit", title_fontsize=7, loc="best")
    figure.suptitle(
        f"Digits test features (2-D LeNet++); classes 5-9 trained on a tenth of their samples; CIA weight "
        f"{cia_weight:g}\nblack: class centres of the test features; dashed circle: their mean norm", fontsize=9,
    )
    figure.tight_layout()
    atomic.write_figure(out_dir / "toy_cia.png", figure, dpi=120)
    plt.close(figure)
    return results


def three_digits_exclusive(
    out_dir: Path, epochs: int = 20, exclusive_weight: float = 1.0, learning_rate: float = 0.01, seed: int = 0
) -> Dict:
    """(b): softmax vs softmax + exclusive regularization on digits 0, 1, 2; writes toy_exclusive.png."""
    images, labels = digit_images()
    chosen = np.flatnonzero(labels < 3)
    images, labels = images[chosen], labels[chosen]
    train, test = split_per_class(labels, test_fraction=1 / 3, seed=seed)
    random_mean, random_std = random_separability(2, 3, draws=1000, seed=seed)
    runs = {"softmax": [], "softmax + exclusive": [ExclusiveRegularizer(weight=exclusive_weight)]}
    results: Dict = {
        "exclusive_weight": exclusive_weight, "epochs": epochs, "learning_rate": learning_rate,
        "random_sep_mean": random_mean, "random_sep_std": random_std, "runs": {},
    }
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, (name, regularizers) in zip(axes, runs.items()):
        trainer = train_model(
            images[train], labels[train], 3, regularizers, epochs=epochs, learning_rate=learning_rate, seed=seed
        )
        features = embed(trainer, images[test])
        kernel = trainer.head.kernel.numpy()
        sep = separability(kernel)
        results["runs"][name] = {
            "test_accuracy": accuracy(trainer, features, labels[test]),
            "sep_mean": float(sep.mean()),
            "sep_std": float(sep.std()),
            "angles_deg": pairwise_angles(kernel),
        }
        plot_features(ax, features, labels[test], kernel=kernel, title=f"{name}: mean(Sep) {sep.mean():.3f}")
    axes[0].legend(markerscale=3, fontsize=7, title="digit", title_fontsize=7, loc="best")
    figure.suptitle(
        f"Digits 0-2 test features (2-D LeNet++), arrows: columns of W; random W: mean(Sep) {random_mean:.3f}",
        fontsize=9,
    )
    figure.tight_layout()
    atomic.write_figure(out_dir / "toy_exclusive.png", figure, dpi=120)
    plt.close(figure)
    return results


def pairwise_angles(kernel: np.ndarray) -> List[float]:
    """Angles in degrees between the columns of W [D, C], pairs (0, 1), (0, 2), ..., (C-2, C-1)."""
    columns = kernel / np.linalg.norm(kernel, axis=0)
    cosines = np.clip(columns.T @ columns, -1.0, 1.0)
    count = kernel.shape[1]
    return [float(np.degrees(np.arccos(cosines[i, j]))) for i in range(count) for j in range(i + 1, count)]


def orl_exclusive(
    out_dir: Path, orl_dir, epochs: int = 40, exclusive_weight: float = 1.0, embedding_size: int = 64, seed: int = 0
) -> Dict:
    """(c): mean(Sep) of W trained on ORL with softmax vs softmax + exclusive vs random W; writes toy_orl_sep.png."""
    images, labels = orl_images(orl_dir)
    num_classes = int(labels.max()) + 1
    train, test = split_per_class(labels, test_fraction=0.3, seed=seed)
    random_mean, random_std = random_separability(embedding_size, num_classes, draws=20, seed=seed)
    rng = np.random.default_rng(seed)
    random_sep = separability(rng.uniform(-1.0, 1.0, size=(embedding_size, num_classes)))
    runs = {"softmax": [], "softmax + exclusive": [ExclusiveRegularizer(weight=exclusive_weight)]}
    results: Dict = {
        "exclusive_weight": exclusive_weight, "epochs": epochs, "classes": num_classes,
        "embedding_size": embedding_size, "train_examples": int(len(train)),
        "random_sep_mean": random_mean, "random_sep_std": random_std, "runs": {},
    }
    figure, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(-0.2, 1.0, 37)
    ax.hist(random_sep, bins=bins, histtype="step", color="grey", linestyle="--", label=f"random W ({random_mean:.3f})")
    for colour, (name, regularizers) in zip(("tab:red", "tab:blue"), runs.items()):
        trainer = train_model(
            images[train], labels[train], num_classes, regularizers, embedding_size=embedding_size, epochs=epochs,
            seed=seed,
        )
        sep = separability(trainer.head.kernel.numpy())
        results["runs"][name] = {
            "test_accuracy": accuracy(trainer, embed(trainer, images[test]), labels[test]),
            "sep_mean": float(sep.mean()),
            "sep_std": float(sep.std()),
        }
        ax.hist(sep, bins=bins, histtype="step", color=colour, linewidth=1.5, label=f"{name} ({sep.mean():.3f})")
    ax.set_xlabel("Sep_i = max_j cos(W_i, W_j)", fontsize=8)
    ax.set_ylabel("classes", fontsize=8)
    ax.set_title(f"ORL, {num_classes} classes, {embedding_size}-D features: Sep_i of W (mean in brackets)", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    figure.tight_layout()
    atomic.write_figure(out_dir / "toy_orl_sep.png", figure, dpi=120)
    plt.close(figure)
    return results


# ----------------------------------------------------------------------------------------------- report
def summary(results: Dict) -> str:
    """The measured numbers as Markdown tables."""
    lines = []
    if "cia" in results:
        lines += [
            "(a) imbalanced digits, test set | accuracy | minority accuracy | ||c|| std/mean all | small classes | "
            "large classes",
            "---|---|---|---|---|---",
        ]
        for name, run in results["cia"]["runs"].items():
            spread = {row["bucket"]: row for row in run["center_norm_spread"]}
            buckets = [row["relative_std"] for row in run["center_norm_spread"][:-1]]
            lines.append(
                f"{name} | {run['test_accuracy']:.3f} | {run['minority_test_accuracy']:.3f} | "
                f"{spread['all']['relative_std']:.3f} | " + " | ".join(f"{value:.3f}" for value in buckets)
            )
        lines.append("")
    for key, title in (("exclusive", "(b) digits 0-2"), ("orl", "(c) ORL faces")):
        if key not in results:
            continue
        block = results[key]
        lines += [f"{title} | test accuracy | mean(Sep) | std(Sep)", "---|---|---|---"]
        for name, run in block["runs"].items():
            lines.append(f"{name} | {run['test_accuracy']:.3f} | {run['sep_mean']:.3f} | {run['sep_std']:.3f}")
        lines += [f"random W | | {block['random_sep_mean']:.3f} | {block['random_sep_std']:.3f}", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.regularizers.toy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="folder for toy_*.png and toy_results.json")
    parser.add_argument("--orl", default=str(DEFAULT_ORL), help="ORL folder (s1..s40 of PNGs)")
    parser.add_argument("--skip-orl", action="store_true", help="run only the two digits experiments")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies every experiment's epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.skip_orl and not Path(args.orl).is_dir():
        print(f"error: ORL folder not found: {args.orl} (pass --orl or --skip-orl)", file=sys.stderr)
        return 2
    if not args.skip_orl and not any(path.is_dir() for path in Path(args.orl).glob("s*")):
        print(f"error: --orl {args.orl}: no ORL subject folders s1..s40 in it (pass --orl or --skip-orl)",
              file=sys.stderr)
        return 2

    def epochs(count: int) -> int:
        return max(1, int(round(count * args.epochs_scale)))

    started = time.time()
    results = {
        "cia": imbalanced_cia(out_dir, epochs=epochs(40), seed=args.seed),
        "exclusive": three_digits_exclusive(out_dir, epochs=epochs(20), seed=args.seed),
    }
    if not args.skip_orl:
        results["orl"] = orl_exclusive(out_dir, args.orl, epochs=epochs(40), seed=args.seed)
    results["seconds"] = round(time.time() - started, 1)
    atomic.write_json(out_dir / "toy_results.json", results)
    print(summary(results))
    print(f"done in {results['seconds']:.0f}s; figures and toy_results.json in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
