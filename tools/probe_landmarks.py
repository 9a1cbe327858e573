"""Landmark probe (APRN paper 000, Table 3): how precisely each stage of a frozen trained model locates landmarks.

    python -m tools.probe_landmarks runs/baseline --data data/synth --prefix test --out runs/baseline/probe_landmarks.json

The backbone of the run is frozen; per stage (stem, stage1..stage4) a small regressor (Conv3x3-BN-ReLU of --channels,
max-pool, FC to 2M) is trained with the L1 loss on the faces of some identities of --data/--prefix and evaluated on
the faces of the other identities (--holdout of them). Images are resized and centre-cropped as the run's config.yaml
says. Printed per stage: the mean L1 error per face over its 2M coordinates ((x / w, y / h) units) and the mean
absolute error per coordinate in pixels. A higher error means the stage keeps less pose.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tfface.backbones.blocks import STAGE_KEYS  # noqa: E402
from tfface.evaluation.pose_probes import (  # noqa: E402
    landmark_probe,
    load_run_backbone,
    read_probe_set,
    split_by_identity,
)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.probe_landmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", help="a finished training run (run.json, config.yaml, backbone.weights.h5)")
    parser.add_argument("--data", required=True, help="TFRecord folder with landmarks")
    parser.add_argument("--prefix", default="test", help="data set prefix (default test)")
    parser.add_argument("--holdout", type=float, default=0.5, help="fraction of identities evaluated (default 0.5)")
    parser.add_argument("--stages", nargs="+", default=list(STAGE_KEYS), choices=STAGE_KEYS)
    parser.add_argument("--channels", type=int, nargs="+", default=[32], help="regressor conv widths (default 32)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file for the numbers")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        backbone, data = load_run_backbone(args.work_dir)
        faces = read_probe_set(args.data, args.prefix, data.get("image_size"), data.get("crop_size"))
        held_out = split_by_identity(faces.labels, args.holdout, args.seed)
        keras.utils.set_random_seed(args.seed)
        results = landmark_probe(
            backbone, faces.subset(~held_out), faces.subset(held_out), stages=args.stages, channels=args.channels,
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"landmark probe of {args.work_dir} on {args.data}/{args.prefix} ({int(held_out.sum())} held-out faces)")
    print("| stage | L1 per face | pixel error | train L1 |\n|---|---|---|---|")
    for stage, numbers in results.items():
        print(f"| {stage} | {numbers['l1']:.4f} | {numbers['pixel_error']:.3f} | {numbers['train_l1']:.4f} |")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"work_dir": args.work_dir, "data": args.data, "prefix": args.prefix, "stages": results},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
