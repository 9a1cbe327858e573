"""APRN's l_mean: the mean landmarks of the frontal faces of a training set, written as JSON for the `aprn` branch.

    python -m experiments.aprn.mean_landmarks --config experiments/aprn/configs/aprn_softmax.yaml          # data and output from the config
    python -m experiments.aprn.mean_landmarks --data data/synth --crop-size 56 56 --out runs/aprn/mean_landmarks.json

Landmarks are read through the training pipeline in evaluation mode (resize to image_size, centre crop to crop_size,
no flip), so they are (x / w, y / h) of the network input, as the branch receives them; the centre crop is the mean
of the random crops. A face is frontal when |yaw| <= --max-yaw, yaw from the data's `pose` feature, or, without poses
(or with --yaw-from symmetry), from the symmetry of the landmarks (tfface.branches.mean_landmarks.symmetry_yaw).
With --config the data section and the output path (the `aprn` branch's options.mean_landmarks) come from the config.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfface import cli  # noqa: E402
from tfface.branches.mean_landmarks import frontal_mean_landmarks, save_mean_landmarks, symmetry_yaw  # noqa: E402
from tfface.data.pipeline import make_dataset  # noqa: E402
from tfface.data.writer import read_description  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402
from tfface.training.config import load_config  # noqa: E402

YAW_SOURCES = ("auto", "pose", "symmetry")


def compute_mean_landmarks(
    data_dir, prefix: str = "train", image_size=None, crop_size=None, max_yaw: float = 15.0, yaw_from: str = "auto"
) -> Tuple[np.ndarray, Dict]:
    """(l_mean [M, 2], metadata) over the frontal faces of `data_dir/<prefix>`; metadata records how."""
    if yaw_from not in YAW_SOURCES:
        raise ConfigError(f"--yaw-from: unknown source '{yaw_from}'; available: {', '.join(YAW_SOURCES)}")
    description = read_description(data_dir, prefix)
    has = description["has"]
    if not has.get("landmarks", False):
        raise ConfigError(f"data set '{prefix}' in {data_dir} has no landmarks: l_mean needs them")
    if yaw_from == "pose" and not has.get("pose", False):
        raise ConfigError(f"--yaw-from pose: data set '{prefix}' in {data_dir} has no pose feature")
    source = "pose" if yaw_from == "pose" or (yaw_from == "auto" and has.get("pose", False)) else "symmetry"
    features = ("landmarks", "pose") if source == "pose" else ("landmarks",)
    dataset = make_dataset(
        data_dir, prefix=prefix, batch_size=512, image_size=image_size, crop_size=crop_size, training=False,
        flip=False, features=features,
    )
    landmarks, yaw, aspect = [], [], None
    for batch in dataset.as_numpy_iterator():
        aspect = batch["image"].shape[2] / batch["image"].shape[1]
        landmarks.append(batch["landmarks"])
        yaw.append(batch["pose"][:, 0] if source == "pose" else symmetry_yaw(batch["landmarks"], aspect=aspect))
    landmarks, yaw = np.concatenate(landmarks), np.concatenate(yaw)
    values = frontal_mean_landmarks(landmarks, yaw, max_yaw)
    metadata = {
        "num_landmarks": int(values.shape[0]),
        "coordinates": "(x / w, y / h) of the network input image",
        "data": str(data_dir),
        "prefix": prefix,
        "image_size": list(image_size) if image_size else None,
        "crop_size": list(crop_size) if crop_size else None,
        "max_yaw": float(max_yaw),
        "yaw_from": source,
        "num_frontal": int(np.sum(np.abs(yaw) <= max_yaw)),
        "num_faces": int(len(yaw)),
    }
    return values, metadata


def _from_config(path: str, overrides: List[str]) -> Dict:
    """Data settings and the `aprn` branch's mean_landmarks path of a training config."""
    config = load_config(path, overrides)
    paths = [
        spec.get("options", {}).get("mean_landmarks")
        for spec in config["branches"]
        if isinstance(spec, dict) and spec.get("name") == "aprn"
    ]
    data = config["data"]
    if not data["train"]:
        raise ConfigError(f"{path}: data.train is not set")
    return {
        "data": data["train"], "prefix": data["prefix"], "image_size": data["image_size"],
        "crop_size": data["crop_size"], "out": next((p for p in paths if isinstance(p, str)), None),
    }


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.aprn.mean_landmarks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="training config: data section and output path (aprn options.mean_landmarks)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as trainers.train takes it")
    parser.add_argument("--data", help="TFRecord folder (tools.make_tfrecords or tools.synth); overrides the config")
    parser.add_argument("--prefix", help="data set prefix (default train)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize before cropping")
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="centre crop (the network input)")
    parser.add_argument("--max-yaw", type=float, default=15.0, help="|yaw| of frontal faces, degrees (default 15)")
    parser.add_argument("--yaw-from", choices=YAW_SOURCES, default="auto",
                        help="auto: the pose feature when stored, else landmark symmetry")
    parser.add_argument("--out", help="JSON file to write (default: the config's aprn options.mean_landmarks)")
    return parser.parse_args(argv)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    settings = _from_config(args.config, args.overrides) if args.config else {}
    given = {"data": args.data, "prefix": args.prefix, "image_size": args.image_size,
             "crop_size": args.crop_size, "out": args.out}
    settings.update({key: value for key, value in given.items() if value is not None})
    if not settings.get("data"):
        raise ConfigError("give --data (or --config with data.train)")
    if not settings.get("out"):
        raise ConfigError("give --out (or --config with an aprn branch whose options.mean_landmarks is a path)")
    values, metadata = compute_mean_landmarks(
        settings["data"], settings.get("prefix") or "train", settings.get("image_size"), settings.get("crop_size"),
        max_yaw=args.max_yaw, yaw_from=args.yaw_from,
    )
    save_mean_landmarks(settings["out"], values, **metadata)
    print(
        f"l_mean of {metadata['num_frontal']} frontal faces (|yaw| <= {args.max_yaw:g} deg from {metadata['yaw_from']}) "
        f"of {metadata['num_faces']}, {metadata['num_landmarks']} landmarks -> {settings['out']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
