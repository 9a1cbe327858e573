"""Pose probe (APRN paper 000, ablation study): can a linear SVM tell frontal from profile embeddings of a model?

    python -m experiments.aprn.probe_pose runs/baseline --data data/synth --prefix test --out runs/baseline/probe_pose.json

Faces of --data/--prefix are frontal when |yaw| <= --frontal-max and profile when |yaw| >= --profile-min (yaw from
the `pose` feature, else from landmark symmetry); faces with negative yaw are mirrored so that all profiles look the
same way. A linear SVM (scikit-learn, standardised L2-normalised embeddings) is trained on the faces of some
identities and tested on the others (--holdout of them), classes balanced: 0.5 is chance, lower accuracy means more
pose-invariant embeddings. With --pairs P it also reports 10-fold verification accuracy on P frontal-profile pairs
(half genuine; flip test as insightface), the cross-pose accuracy APRN should keep.
"""
import argparse
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfface import atomic, cli  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402
from experiments.aprn.probes import (  # noqa: E402
    cross_pose_verification,
    embed,
    pose_classes,
    pose_probe,
    read_probe_set,
    run_backbone,
    split_by_identity,
)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.aprn.probe_pose", description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", help="a finished training run (run.json, config.yaml, backbone.weights.h5)")
    parser.add_argument("--data", required=True, help="TFRecord folder with pose or landmarks")
    parser.add_argument("--prefix", default="test", help="data set prefix (default test)")
    parser.add_argument("--frontal-max", type=float, default=15.0, help="|yaw| of frontal faces (default 15)")
    parser.add_argument("--profile-min", type=float, default=45.0, help="|yaw| of profile faces (default 45)")
    parser.add_argument("--holdout", type=float, default=0.3, help="fraction of identities tested (default 0.3)")
    parser.add_argument("--C", type=float, default=1.0, help="SVM regularisation (default 1)")
    parser.add_argument("--pairs", type=int, default=0, help="frontal-profile verification pairs (default none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file for the numbers")
    return parser.parse_args(argv)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    backbone, image_size, crop_size = run_backbone(args.work_dir)
    faces = read_probe_set(args.data, args.prefix, image_size, crop_size)
    if faces.yaw is None:
        raise ConfigError(f"{args.data}/{args.prefix}: neither pose nor landmarks, so no yaw")
    classes = pose_classes(faces.yaw, args.frontal_max, args.profile_min)
    held_out = split_by_identity(faces.labels, args.holdout, args.seed)
    result = pose_probe(embed(backbone, faces.images_facing_one_side()), classes, held_out, C=args.C,
                        seed=args.seed)
    if args.pairs:
        verification = cross_pose_verification(backbone, faces, classes, args.pairs, args.seed)
        result["cross_pose_accuracy"] = verification["accuracy_mean"]
        result["cross_pose_accuracy_std"] = verification["accuracy_std"]
    print(
        f"pose probe of {args.work_dir}: linear SVM frontal (|yaw| <= {args.frontal_max:g}) vs profile "
        f"(|yaw| >= {args.profile_min:g}, yaw from {faces.yaw_source}): val {result['val_accuracy']:.4f} / train "
        f"{result['train_accuracy']:.4f} ({result['num_test']} / {result['num_train']} faces)"
    )
    if args.pairs:
        print(f"frontal-profile verification on {args.pairs} pairs: {result['cross_pose_accuracy']:.4f} "
              f"+- {result['cross_pose_accuracy_std']:.4f}")
    if args.out:
        atomic.write_json(args.out, {"work_dir": args.work_dir, "data": args.data, "prefix": args.prefix, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
