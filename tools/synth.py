"""Generate a SynthFaces data set (procedural 3-D faces rendered with tfface.rendering).

    python -m tools.synth --out DIR --identities N --images-per-identity K --seed S [--test-identities T]
        [--test-images-per-identity M] [--image-size 64] [--max-yaw 30] [--max-pitch 15] [--max-roll 10]
        [--label-noise 0.0] [--long-tail 0.0] [--batch-size 128] [--preview PATH] [--no-progress]

Writes DIR/train-*.tfrecord + DIR/train.json (training identities), and with --test-identities the held-out
identities as DIR/test/<name>/<name>_0001.png (LFW layout) with DIR/test/pairs.txt (LFW View 2 format) and
DIR/test-*.tfrecord + DIR/test.json; DIR/synth.json records the options and a summary; DIR/preview.png (or --preview)
shows rendered faces with their landmarks, canonical depth and albedo. See tfface/data/synth.py for the ground truth
stored with every image. Invalid options print one line and exit with status 2.
"""
import argparse
import sys
from pathlib import Path

from tfface import cli

PREVIEW_COLUMNS = 8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--identities", required=True, type=int, help="number of training identities")
    parser.add_argument("--images-per-identity", required=True, type=int,
                        help="images per training identity (the head count with --long-tail)")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--test-identities", type=int, default=0, help="held-out identities (LFW-style test set)")
    parser.add_argument("--test-images-per-identity", type=int, default=None,
                        help="images per test identity (default: --images-per-identity)")
    parser.add_argument("--image-size", type=int, default=64, help="square image size in pixels")
    parser.add_argument("--max-yaw", type=float, default=30.0, help="largest |yaw| in degrees")
    parser.add_argument("--max-pitch", type=float, default=15.0, help="largest |pitch| in degrees")
    parser.add_argument("--max-roll", type=float, default=10.0, help="largest |roll| in degrees")
    parser.add_argument("--label-noise", type=float, default=0.0, help="fraction of training labels replaced")
    parser.add_argument("--long-tail", type=float, default=0.0,
                        help="Zipf exponent of images per identity (0: uniform)")
    parser.add_argument("--folds", type=int, default=10, help="folds of pairs.txt")
    parser.add_argument("--pairs-per-fold", type=int, default=300, help="matched (and mismatched) pairs per fold")
    parser.add_argument("--batch-size", type=int, default=128, help="images rendered at once")
    parser.add_argument("--preview", type=Path, default=None, help="preview PNG path (default: OUT/preview.png)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check(args) -> None:
    """Raise ValueError naming the first invalid option."""
    positive = {"--identities": args.identities, "--images-per-identity": args.images_per_identity,
                "--folds": args.folds, "--pairs-per-fold": args.pairs_per_fold, "--batch-size": args.batch_size}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if args.test_identities < 0:
        raise ValueError(f"--test-identities must be >= 0, got {args.test_identities}")
    if args.test_identities == 1:
        raise ValueError("--test-identities must be 0 or >= 2 (pairs need two identities)")
    test_images = args.images_per_identity if args.test_images_per_identity is None else args.test_images_per_identity
    if args.test_identities and test_images < 2:
        raise ValueError(f"--test-images-per-identity must be >= 2 for matched pairs, got {test_images}")
    if args.image_size < 16:
        raise ValueError(f"--image-size must be >= 16, got {args.image_size}")
    for name, value in (("--max-yaw", args.max_yaw), ("--max-pitch", args.max_pitch), ("--max-roll", args.max_roll)):
        if not 0.0 <= value <= 60.0:
            raise ValueError(f"{name} must be in [0, 60] degrees, got {value}")
    if not 0.0 <= args.label_noise <= 1.0:
        raise ValueError(f"--label-noise must be in [0, 1], got {args.label_noise}")
    if args.label_noise > 0.0 and args.identities < 2:
        raise ValueError("--label-noise needs --identities >= 2")
    if args.long_tail < 0.0:
        raise ValueError(f"--long-tail must be >= 0, got {args.long_tail}")
    from tfface.errors import check_output_folder

    check_output_folder(args.out, "--out")
    if args.preview is not None:
        check_output_folder(args.preview.parent, "--preview", args.preview)


def save_preview(path, rendered: dict) -> None:
    """A PNG grid: rendered images with their 68 landmarks (and the 5-point set in red), canonical depth, albedo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfface import atomic
    from tfface.data.synth import five_point_landmarks

    count = len(rendered["image"])
    figure, axes = plt.subplots(3, count, figsize=(1.6 * count, 5.0), squeeze=False)
    for column in range(count):
        landmarks = rendered["landmarks"][column] - 0.5  # schema pixels -> pixel-centre coordinates of imshow
        five = five_point_landmarks(landmarks)
        yaw, pitch, roll = rendered["pose"][column]
        axes[0, column].imshow(rendered["image"][column], interpolation="nearest")
        axes[0, column].scatter(landmarks[:, 0], landmarks[:, 1], s=2, c="lime", linewidths=0)
        axes[0, column].scatter(five[:, 0], five[:, 1], s=6, c="red", linewidths=0)
        axes[0, column].set_title(f"y{yaw:.0f} p{pitch:.0f} r{roll:.0f}", fontsize=7)
        axes[1, column].imshow(rendered["depth"][column], cmap="viridis_r", vmin=0.0, vmax=1.0)
        axes[2, column].imshow(rendered["albedo"][column])
    for row, label in enumerate(("image", "depth", "albedo")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    atomic.write_figure(path, figure, dpi=70)
    plt.close(figure)


@cli.command
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _check(args)

    from tfface.data.synth import SynthFaceRenderer, SynthOptions, generate

    options = SynthOptions(image_size=args.image_size, max_yaw=args.max_yaw, max_pitch=args.max_pitch,
                           max_roll=args.max_roll)
    summary = generate(
        args.out, args.identities, args.images_per_identity, args.seed, test_identities=args.test_identities,
        test_images_per_identity=args.test_images_per_identity, label_noise=args.label_noise,
        long_tail=args.long_tail, options=options, folds=args.folds, pairs_per_fold=args.pairs_per_fold,
        batch_size=args.batch_size, progress=not args.no_progress,
    )
    shown = list(range(min(PREVIEW_COLUMNS, args.identities)))
    preview_path = args.out / "preview.png" if args.preview is None else args.preview
    save_preview(preview_path, SynthFaceRenderer(options, args.batch_size).render(args.seed, shown, [0] * len(shown)))
    train, test = summary["train"], summary["test"]
    print(f"train: {train['images']} images of {train['identities']} identities "
          f"({train['noisy_labels']} noisy labels) -> {args.out}/train.json")
    if test["identities"]:
        print(f"test: {test['images']} images of {test['identities']} identities, pairs "
              f"{test['pairs']['folds']} x {test['pairs']['pairs_per_fold']} -> {args.out}/test/pairs.txt")
    print(f"{train['images'] + test['images']} images in {summary['seconds']} s, {summary['images_per_second']} images/s "
          f"(with tracing and XLA compilation; python -m benchmarks.bench_synth times rendering alone); "
          f"preview: {preview_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
