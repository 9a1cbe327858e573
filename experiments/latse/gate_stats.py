"""How LATSE's teacher top-k gate treats a data set with known label noise (a set that stores `true_label`).

    python -m experiments.latse.gate_stats --teacher runs/latse_synth_teacher --data data/synth_noisy --k 1 3 --out gate.json

The teacher (a training work dir) scores every image of `--data` read as in evaluation (the teacher's resize and
centre crop, no flip); for each k it reports the kept fraction of all examples, of the clean ones (label ==
true_label) and the dropped fraction of the noisy ones, as JSON on stdout (and in --out).
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfface import cli, runs  # noqa: E402
from tfface.data.pipeline import make_dataset  # noqa: E402
from tfface.data.writer import read_description  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402
from tfface.gates import TeacherTopKGate, gate_statistics  # noqa: E402


def teacher_gate_statistics(
    teacher_dir, data_dir, prefix: str = "train", ks: Sequence[int] = (1, 3), batch_size: int = 256
) -> Dict:
    """{"teacher", "data", "examples", "k": {k: gate_statistics entry}} for the teacher in `teacher_dir`."""
    description = read_description(data_dir, prefix)
    if not description["has"].get("true_label", False):
        raise ConfigError(f"data set '{prefix}' in {data_dir} has no true_label: clean and noisy cannot be told apart")
    gate = TeacherTopKGate(str(teacher_dir), k=max(ks))
    if gate.teacher["num_classes"] != description["num_classes"]:
        raise ConfigError(
            f"--teacher has {gate.teacher['num_classes']} classes, --data {description['num_classes']}"
        )
    gate.build_teacher()
    data_config = runs.read_config(teacher_dir)["data"]
    dataset = make_dataset(
        data_dir, prefix=prefix, batch_size=batch_size, training=False, flip=False,
        image_size=data_config["image_size"], crop_size=data_config["crop_size"], features=("true_label",),
    )
    ranks, labels, true_labels = [], [], []
    for batch in dataset:
        ranks.append(gate.label_ranks(batch["image"], batch["label"]).numpy())
        labels.append(batch["label"].numpy())
        true_labels.append(batch["true_label"].numpy())
    ranks, labels, true_labels = (np.concatenate(values) for values in (ranks, labels, true_labels))
    return {
        "teacher": str(teacher_dir),
        "data": str(data_dir),
        "examples": int(len(labels)),
        "k": gate_statistics(ranks, labels, true_labels, ks),
    }


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.latse.gate_stats",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's training work dir")
    parser.add_argument("--data", required=True, help="TFRecord folder with true_label (tools.synth --label-noise)")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3], help="top-k values to report")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", help="also write the JSON here")
    return parser.parse_args(argv)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if min(args.k) < 1:
        raise ConfigError(f"--k values must be positive integers, got {args.k}")
    report = teacher_gate_statistics(args.teacher, args.data, args.prefix, args.k, args.batch_size)
    cli.emit_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
