"""Downstream transfer (3D-BERL Sec. 4.2, Tables 1, 6, 7): facial attributes from a backbone's first three stages,
fine-tuned with a fraction of the labels.

    python -m experiments.bypass3d.attributes_transfer --data DIR [--train-prefix train] [--test-prefix test]
        --init scratch --init fr=runs/fr_only --init 3d-berl=runs/bypass3d [--fractions 0.05 0.1 0.2 0.5 1.0]
        [--epochs 20] [--batch-size 40] [--hidden 256] [--learning-rate 1e-3] [--seed 0] [--threshold 0.5]
        [--out report.md]

Works with any attribute labels stored in the TFRecords ("attributes", a float list of A values per example, a
value > --threshold counting as present). For each --init (a run's work dir, whose backbone.weights.h5 is loaded;
"scratch": the same architecture, randomly initialised) and each fraction: stage 4 and the embedding layer are
dropped, two FC layers (Flatten - Dense(hidden) - ReLU - Dense(A)) go on the stage-3 features, and the whole network
is fine-tuned with Adam and a per-attribute sigmoid cross-entropy on a seeded random subset holding that fraction of
the training examples. Reported: the mean accuracy over attributes on the test split (%), as a Markdown table with
one row per --init and one column per fraction (plus the JSON next to it).
"""
import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np

from tfface import atomic, cli, runs
from tfface.data.pipeline import make_dataset

SCRATCH = "scratch"


def load_split(data_dir, prefix: str, image_size, threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """(normalised images float32 [N, H, W, 3], 0/1 labels float32 [N, A]: attribute > threshold) of data_dir/prefix,
    in written order."""
    dataset = make_dataset(data_dir, prefix=prefix, batch_size=256, image_size=image_size, training=False,
                           features=("attributes",))
    images, attributes = [], []
    for batch in dataset:
        images.append(batch["image"].numpy())
        attributes.append(batch["attributes"].numpy())
    return np.concatenate(images), (np.concatenate(attributes) > threshold).astype(np.float32)


def parse_inits(specs: Sequence[str]) -> List[Tuple[str, str]]:
    """["scratch", "name=run_dir", ...] -> [(name, run_dir or "")], names unique; at least one run dir."""
    inits = []
    for spec in specs:
        if spec == SCRATCH:
            inits.append((SCRATCH, ""))
        elif "=" in spec and spec.split("=", 1)[0] and spec.split("=", 1)[1]:
            inits.append(tuple(spec.split("=", 1)))
        else:
            raise ValueError(f"--init expects 'scratch' or NAME=RUN_DIR, got '{spec}'")
    names = [name for name, _ in inits]
    if len(set(names)) != len(names):
        raise ValueError(f"--init names must be unique, got {names}")
    if all(name == SCRATCH for name in names):
        raise ValueError("--init needs at least one NAME=RUN_DIR (it also sets the architecture of 'scratch')")
    return inits


def attribute_model(backbone: keras.Model, num_attributes: int, hidden: int) -> keras.Model:
    """Backbone input -> stage-3 features -> Flatten - Dense(hidden) - ReLU - Dense(num_attributes) logits."""
    features = backbone.output["stage3"]
    x = keras.layers.Flatten(name="attribute_flatten")(features)
    x = keras.layers.Dense(hidden, activation="relu", name="attribute_fc1")(x)
    logits = keras.layers.Dense(num_attributes, name="attribute_fc2")(x)
    return keras.Model(backbone.input, logits, name="attribute_model")


def subset_indices(count: int, fraction: float, seed: int) -> np.ndarray:
    """ceil(fraction * count) (at least 1) indices of a seeded permutation of range(count)."""
    size = max(1, math.ceil(fraction * count))
    return np.random.default_rng(seed).permutation(count)[:size]


def mean_attribute_accuracy(logits, labels) -> float:
    """Mean over attributes of the accuracy (%) of logits > 0 against 0/1 labels, both [N, A]."""
    return float(np.mean((np.asarray(logits) > 0) == (np.asarray(labels) > 0.5)) * 100.0)


def transfer(run: Dict, weights_path, data, fraction: float, args) -> float:
    """Fine-tunes one (init, fraction) cell and returns its test accuracy (%)."""
    keras.utils.set_random_seed(args.seed)
    backbone = runs.build_backbone(run, weights_path)
    (train_images, train_labels), (test_images, test_labels) = data
    model = attribute_model(backbone, train_labels.shape[1], args.hidden)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    chosen = subset_indices(len(train_images), fraction, args.seed)
    model.fit(train_images[chosen], train_labels[chosen], batch_size=args.batch_size, epochs=args.epochs,
              shuffle=True, verbose=0)
    return mean_attribute_accuracy(model.predict(test_images, batch_size=256, verbose=0), test_labels)


def markdown_table(results: Dict[str, Dict[str, float]], fractions: Sequence[float]) -> str:
    header = "| init | " + " | ".join(f"{fraction:.0%}" if fraction >= 0.01 else f"{fraction:.1%}"
                                       for fraction in fractions) + " |"
    lines = [header, "|---" * (len(fractions) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[str(fraction)]:.2f}" for fraction in fractions) + " |")
    return "\n".join(lines)


def run_transfer(args) -> Dict:
    inits = parse_inits(args.init)
    if not args.fractions or any(not 0.0 < fraction <= 1.0 for fraction in args.fractions):
        raise ValueError(f"--fractions must lie in (0, 1], got {args.fractions}")
    read = {name: runs.read_run(path) for name, path in inits if path}
    reference = next(iter(read.values()))
    for name, run in read.items():
        if (run["backbone"], run["input_shape"]) != (reference["backbone"], reference["input_shape"]):
            raise ValueError(f"--init {name}: backbone {run['backbone']} {run['input_shape']} differs from "
                             f"{reference['backbone']} {reference['input_shape']}; compare like with like")
    image_size = reference["input_shape"][:2]
    train = load_split(args.data, args.train_prefix, image_size, args.threshold)
    test = load_split(args.data, args.test_prefix, image_size, args.threshold)
    if train[1].shape[1] != test[1].shape[1]:
        raise ValueError(f"{args.data}: {args.train_prefix} has {train[1].shape[1]} attributes, "
                         f"{args.test_prefix} {test[1].shape[1]}")
    results = {}
    for name, path in inits:
        run = read.get(name, reference)
        weights = Path(path) / runs.BACKBONE_WEIGHTS if path else None
        results[name] = {str(fraction): transfer(run, weights, (train, test), fraction, args)
                         for fraction in args.fractions}
        print(f"{name}: " + ", ".join(f"{fraction}: {value:.2f}" for fraction, value in results[name].items()))
    return {
        "data": str(args.data), "train_examples": int(len(train[0])), "test_examples": int(len(test[0])),
        "attributes": int(train[1].shape[1]), "epochs": args.epochs, "batch_size": args.batch_size,
        "fractions": list(args.fractions), "mean_accuracy_percent": results,
        "table": markdown_table(results, args.fractions),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.bypass3d.attributes_transfer",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="TFRecord folder whose examples store 'attributes'")
    parser.add_argument("--train-prefix", default="train")
    parser.add_argument("--test-prefix", default="test")
    parser.add_argument("--init", action="append", required=True, help="'scratch' or NAME=RUN_DIR (repeatable)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=256, help="units of the first FC layer")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the label subset and the initialisation")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="an attribute value above it counts as present (0.5 fits 0/1 and -1/1 labels)")
    parser.add_argument("--out", help="Markdown table to write (a .json with the numbers goes next to it)")
    return parser.parse_args(argv)


@cli.command
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.hidden < 1:
        raise ValueError("--epochs, --batch-size and --hidden must be >= 1")
    report = run_transfer(args)
    print(report["table"])
    if args.out:
        out = Path(args.out)
        atomic.write_text(out, report["table"] + "\n")
        atomic.write_json(out.with_suffix(".json"), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
