"""The main job (`make demo`): SynthFaces -> ArcFace training -> 10-fold verification -> export -> gRPC serving.

    python -m tools.demo [--out demo] [--identities 120] [--images-per-identity 16] [--epochs 12]

Everything lands under --out: data/ (SynthFaces TFRecords, held-out test identities in LFW layout with pairs.txt),
run/ (the training work dir), models/synthfaces/1 (the inference SavedModel), report/ (report.json, report.md, ROC
plot), samples.png (SynthFaces images with their landmarks, depth and albedo) and summary.json. Runs again reuse finished steps.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfface import atomic  # noqa: E402
from tfface.training.config import load_config  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "demo_synthfaces.yaml"
MODEL_NAME = "synthfaces"


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def generate_data(data_dir: Path, preview_path: Path, args) -> None:
    from tools.synth import main as synth

    if (data_dir / "train.json").is_file() and (data_dir / "test" / "pairs.txt").is_file():
        print(f"reusing {data_dir}")
        return
    status = synth([
        "--out", str(data_dir), "--preview", str(preview_path), "--identities", str(args.identities), "--test-identities", str(args.test_identities),
        "--images-per-identity", str(args.images_per_identity), "--image-size", str(args.image_size),
        "--seed", str(args.seed),
    ])
    if status != 0:
        raise SystemExit(status)


def train_model(data_dir: Path, run_dir: Path, args) -> Dict:
    from trainers.train import train

    config = load_config(
        str(CONFIG),
        [
            f"data.train={data_dir}", f"work_dir={run_dir}", f"train.epochs={args.epochs}",
            f"evaluation.pairs_dir={data_dir / 'test'}", f"seed={args.seed}", f"train.batch_size={args.batch_size}",
        ],
    )
    history = train(config).history
    if not history:  # an earlier demo finished this run: read its last epoch back
        import csv

        with open(run_dir / "history.csv") as handle:
            rows = list(csv.DictReader(handle))
        history = {key: [float(row[key]) for row in rows if row[key] not in ("", "NA")] for key in rows[0]}
    return {key: float(values[-1]) for key, values in history.items() if values and key != "epoch"}


def export_model(run_dir: Path, model_dir: Path) -> Path:
    from tfface.export import export_run

    version_dir = model_dir / "1"
    if version_dir.is_dir():
        print(f"reusing {version_dir}")
        return version_dir
    return export_run(run_dir, version_dir)


def evaluate_model(version_dir: Path, data_dir: Path, report_dir: Path) -> Dict:
    from tools.evaluate import main as evaluate

    status = evaluate([
        "--model", str(version_dir), "--benchmark", f"synthfaces_test={data_dir / 'test'}", "--flip", "sum",
        "--out", str(report_dir),
    ])
    if status != 0:
        raise SystemExit(status)
    return json.loads((report_dir / "report.json").read_text())["benchmarks"]["synthfaces_test"]


def serve_and_embed(model_dir: Path, data_dir: Path, version_dir: Path, count: int = 8) -> Dict:
    """Starts the gRPC server on a free loopback port, embeds `count` test images through it and checks them
    against the SavedModel loaded in this process."""
    from serving.client import embed_files, image_files
    from serving.server import ModelServer
    from tfface.export import load_exported
    from tfface.evaluation import load_images

    files = image_files([data_dir / "test"])[:count]
    with ModelServer({MODEL_NAME: str(model_dir)}, host="127.0.0.1", port=0) as server:
        target = f"127.0.0.1:{server.port}"
        served, _ = embed_files(target, MODEL_NAME, files, batch_size=4, progress=False)
    local_model = load_exported(version_dir)
    local = local_model(load_images([str(f) for f in files], tuple(local_model.input_shape[:2])))
    return {"target": target, "images": len(files), "max_abs_difference": float(np.max(np.abs(served - local)))}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo", help="output folder (default: demo)")
    parser.add_argument("--identities", type=int, default=120, help="training identities")
    parser.add_argument("--test-identities", type=int, default=40, help="held-out identities for verification")
    parser.add_argument("--images-per-identity", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64, help="global training batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    data_dir, run_dir, model_dir, report_dir = out / "data", out / "run", out / "models" / MODEL_NAME, out / "report"
    timings, started = {}, time.time()

    def step(name, function, *arguments):
        banner(name)
        begun = time.time()
        result = function(*arguments)
        timings[name] = round(time.time() - begun, 1)
        return result

    step("1/5 SynthFaces: generating the embedded default data set", generate_data, data_dir, out / "samples.png", args)
    last_epoch = step("2/5 training a small backbone with ArcFace", train_model, data_dir, run_dir, args)
    version_dir = step("3/5 exporting the inference SavedModel", export_model, run_dir, model_dir)
    verification = step("4/5 10-fold verification on held-out identities", evaluate_model, version_dir, data_dir,
                        report_dir)
    serving = step("5/5 serving the model over gRPC and embedding test images", serve_and_embed, model_dir,
                   data_dir, version_dir)

    summary = {
        "training": {key: last_epoch[key] for key in ("loss", "accuracy", "verification_accuracy") if key in last_epoch},
        "verification": {key: verification[key] for key in ("accuracy_mean", "accuracy_std", "auc", "eer", "pairs")},
        "serving": serving,
        "seconds": {**timings, "total": round(time.time() - started, 1)},
        "outputs": {"model": str(version_dir), "report": str(report_dir / "report.md"),
                    "samples": str(out / "samples.png")},
    }
    atomic.write_json(out / "summary.json", summary)
    banner("summary")
    print(
        f"training accuracy {summary['training'].get('accuracy', float('nan')):.3f}, "
        f"held-out verification {verification['accuracy_mean']:.3f} +- {verification['accuracy_std']:.3f} "
        f"(AUC {verification['auc']:.3f}, {verification['pairs']} pairs, chance 0.5)\n"
        f"served {serving['images']} images through {serving['target']} "
        f"(max |served - local| {serving['max_abs_difference']:.1e})\n"
        f"total {summary['seconds']['total']:.0f}s; model {version_dir}; report {report_dir / 'report.md'}; "
        f"samples {out / 'samples.png'}; summary {out / 'summary.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
