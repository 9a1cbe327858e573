"""Landmark probe (APRN paper 000, Table 3): how precisely each stage of a frozen trained model locates landmarks.

    python -m experiments.aprn.probe_landmarks runs/baseline --data data/synth --out runs/baseline/probe_landmarks.json

The backbone of the run is frozen; per stage (stem, stage1..stage4) a regressor shaped as Table 1's estimator for
that stage (stride-2 Conv3x3-BN-ReLU blocks of Table 1's widths times --width-multiplier, max-pool, FC to 2M) is
trained with the L1 loss on the faces of --data/--fit-prefix (default train) and evaluated on --data/--prefix
(default test); when both prefixes are the same, the identities are split (--holdout of them evaluated). Images are
resized and centre-cropped as the run's config.yaml says. Printed per stage: the mean L1 error per face over its 2M
coordinates ((x / w, y / h) units), the same relative to the best constant prediction, and the mean absolute error
per coordinate in pixels. A higher error means the stage keeps less pose.
"""
import argparse
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tfface import atomic, cli  # noqa: E402
from tfface.backbones.blocks import STAGE_KEYS  # noqa: E402
from experiments.aprn.probes import fit_and_test_sets, landmark_probe, run_backbone  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.aprn.probe_landmarks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", help="a finished training run (run.json, config.yaml, backbone.weights.h5)")
    parser.add_argument("--data", required=True, help="TFRecord folder with landmarks")
    parser.add_argument("--fit-prefix", default="train", help="faces the regressors are fitted on (default train)")
    parser.add_argument("--prefix", default="test", help="faces they are evaluated on (default test)")
    parser.add_argument("--holdout", type=float, default=0.5,
                        help="fraction of identities evaluated when both prefixes are the same (default 0.5)")
    parser.add_argument("--stages", nargs="+", default=list(STAGE_KEYS), choices=STAGE_KEYS)
    parser.add_argument("--width-multiplier", type=float, default=1 / 32,
                        help="times Table 1's widths (2048 -> 64 at the default 1/32)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file for the numbers")
    return parser.parse_args(argv)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    backbone, image_size, crop_size = run_backbone(args.work_dir)
    fit, test = fit_and_test_sets(args.data, args.fit_prefix, args.prefix, args.holdout, args.seed,
                                  image_size, crop_size)
    keras.utils.set_random_seed(args.seed)
    results = landmark_probe(
        backbone, fit, test, stages=args.stages, width_multiplier=args.width_multiplier, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
    )
    print(f"landmark probe of {args.work_dir}: fitted on {len(fit.labels)} faces, evaluated on {len(test.labels)}")
    print("| stage | L1 per face | relative to a constant | pixel error | train L1 |\n|---|---|---|---|---|")
    for stage, numbers in results.items():
        print(f"| {stage} | {numbers['l1']:.4f} | {numbers['relative_l1']:.3f} | {numbers['pixel_error']:.3f} | "
              f"{numbers['train_l1']:.4f} |")
    if args.out:
        atomic.write_json(args.out, {"work_dir": args.work_dir, "data": args.data, "fit_prefix": args.fit_prefix,
                                     "prefix": args.prefix, "stages": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
