"""APRN's evidence for several runs on the same held-out faces: pose probe, landmark probe, cross-pose verification.

    python -m experiments.aprn.compare --data data/synth_wide --prefix test \\
        --runs baseline=runs/synth_baseline aprn=runs/synth_aprn --out experiments/aprn/results/aprn_synth.json

For each run (NAME=WORK_DIR): the linear-SVM frontal/profile accuracy on held-out identities of --prefix
(experiments.aprn.probe_pose), the landmark-probe L1 error per face on the chosen stages, fitted on --fit-prefix and evaluated
on --prefix (experiments.aprn.probe_landmarks; Table 3), and the 10-fold verification accuracy on frontal-profile pairs of
--prefix; with --pairs-dir also the 10-fold accuracy on that LFW-layout folder (all poses, e.g. SynthFaces'
DIR/test). Every run sees the same faces, identity split, pairs and seeds.
Prints a Markdown table; --out also writes every number as JSON.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tfface import atomic, cli  # noqa: E402
from tfface.backbones.blocks import STAGE_KEYS  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402
from experiments.aprn.probes import (  # noqa: E402
    cross_pose_verification,
    embed,
    fit_and_test_sets,
    landmark_probe,
    pose_classes,
    pose_probe,
    read_probe_set,
    run_backbone,
    split_by_identity,
)
from tfface.training.verification_callback import verify_backbone  # noqa: E402


def parse_runs(items: List[str]) -> Dict[str, str]:
    runs = {}
    for item in items:
        name, separator, work_dir = item.partition("=")
        if not separator or not name or not work_dir:
            raise ConfigError(f"--runs expects NAME=WORK_DIR, got '{item}'")
        runs[name] = work_dir
    return runs


def evaluate_run(work_dir: str, args: argparse.Namespace) -> Dict:
    """The three measurements of one run (same split and seeds for every run)."""
    backbone, image_size, crop_size = run_backbone(work_dir)
    faces = read_probe_set(args.data, args.prefix, image_size, crop_size)
    if faces.yaw is None or faces.landmarks is None:
        raise ConfigError(f"{args.data}/{args.prefix}: the probes need landmarks (and pose or landmark symmetry)")
    classes = pose_classes(faces.yaw, args.frontal_max, args.profile_min)
    held_out = split_by_identity(faces.labels, args.holdout, args.seed)
    fit, test = fit_and_test_sets(args.data, args.fit_prefix, args.prefix, args.holdout, args.seed,
                                  image_size, crop_size)
    keras.utils.set_random_seed(args.seed)
    result = {
        "pose_probe": pose_probe(embed(backbone, faces.images_facing_one_side()), classes, held_out, seed=args.seed),
        "landmark_probe": landmark_probe(
            backbone, fit, test, stages=args.stages, width_multiplier=args.width_multiplier, epochs=args.epochs,
            seed=args.seed,
        ),
        "cross_pose": cross_pose_verification(backbone, faces, classes, args.pairs, args.seed),
    }
    if args.pairs_dir:
        result["pairs_dir"] = verify_backbone(backbone, args.pairs_dir)
    return result


def markdown_table(results: Dict[str, Dict], stages: List[str]) -> str:
    header = ["run", "pose-probe SVM val (train)"] + [f"{stage} landmark-probe L1 (relative)" for stage in stages]
    header.append("frontal-profile verification")
    if any("pairs_dir" in result for result in results.values()):
        header.append("pairs.txt verification")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        pose, cross = result["pose_probe"], result["cross_pose"]
        cells = [name, f"{pose['val_accuracy']:.3f} ({pose['train_accuracy']:.3f})"]
        cells += [
            f"{result['landmark_probe'][stage]['l1']:.3f} ({result['landmark_probe'][stage]['relative_l1']:.3f})"
            for stage in stages
        ]
        cells.append(f"{cross['accuracy_mean']:.4f} +- {cross['accuracy_std']:.4f}")
        if "pairs_dir" in result:
            cells.append(f"{result['pairs_dir']['accuracy_mean']:.4f} +- {result['pairs_dir']['accuracy_std']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plain(value):
    """numpy arrays and scalars as JSON values."""
    return value.tolist() if hasattr(value, "tolist") else float(value)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.aprn.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="NAME=WORK_DIR")
    parser.add_argument("--data", required=True, help="TFRecord folder with landmarks and pose")
    parser.add_argument("--prefix", default="test", help="the evaluated faces (default test)")
    parser.add_argument("--fit-prefix", default="train", help="faces the landmark regressors are fitted on")
    parser.add_argument("--frontal-max", type=float, default=15.0)
    parser.add_argument("--profile-min", type=float, default=45.0)
    parser.add_argument("--holdout", type=float, default=0.5, help="fraction of identities the probes test on")
    parser.add_argument("--stages", nargs="+", default=["stage4"], choices=STAGE_KEYS)
    parser.add_argument("--width-multiplier", type=float, default=1 / 32,
                        help="landmark regressors: times Table 1's widths")
    parser.add_argument("--epochs", type=int, default=30, help="landmark regressor epochs")
    parser.add_argument("--pairs", type=int, default=1000, help="frontal-profile verification pairs")
    parser.add_argument("--pairs-dir", help="an LFW-layout folder (pairs.txt) verified as well")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file for every number")
    return parser.parse_args(argv)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    work_dirs = parse_runs(args.runs)
    results = {name: evaluate_run(work_dir, args) for name, work_dir in work_dirs.items()}
    print(markdown_table(results, args.stages))
    if args.out:
        settings = {key: value for key, value in vars(args).items() if key != "out"}
        report = {"settings": settings, "runs": work_dirs, "results": results}
        atomic.write_json(args.out, json.loads(json.dumps(report, default=_plain)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
