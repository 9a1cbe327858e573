"""tools.verify on CFP's raw photos agrees with tools.evaluate at the calibrated threshold (fold 7, FP).

    python -m experiments.photos.verify_cfp --model models/pretrained/1 [--cfp ../shared/data/cfp]
        [--out data/cfp7] [--cli-pairs 10]

1. `tools.align --no-face skip` on the 700 photos of fold 7's identities (351-400) into OUT/aligned (skipped when
   OUT/aligned/align_report.csv exists).
2. OUT/fold7_FP_detected.csv: fold 7's official FP pairs whose two photos both had a face, over the crops, with
   prepare_cfp's 10 identity-disjoint sub-folds (pairs with a photo MTCNN missed are counted, and left out: on
   them tools.verify answers "no face found", exit 2).
3. `tools.evaluate --model M --benchmark cfp7_fp=... --calibrate cfp7_fp` stores the thresholds in M's metadata.
4. Every pair of the official list on the raw photos through tfface.faces.FaceAnalyzer.verify (what tools.verify
   runs; one analyzer for all pairs, since the command loads the model and MTCNN per call), and the first
   `--cli-pairs` pairs through the `tools.verify` command itself (its exit status against the analyzer's decision).
Prints and writes OUT/verify_cfp.json: the calibration, tools.verify's accuracy on the detected pairs, the
agreement of each pair's decision with the crop embeddings' at the same threshold, and the pairs without a face.
"""
import argparse
import csv
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from experiments.real_faces.prepare_cfp import FOLD, FOLD_IDENTITIES, SUB_FOLDS, identity
from tfface import atomic, cli
from tfface.calibration import read_calibration
from tfface.faces import FaceAnalyzer

BENCHMARK = "cfp7_fp"


def link_photos(cfp: Path, photos: Path) -> None:
    """OUT/photos/<id>/<view>/NN.jpg: links to fold 7's photos (tools.align reads a folder)."""
    for source in sorted((cfp / "images").glob("*/*/*.jpg")):
        if identity(source.relative_to(cfp / "images").as_posix()) in FOLD_IDENTITIES:
            link = photos / source.relative_to(cfp / "images")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source.resolve())


def align(photos: Path, aligned: Path) -> dict:
    """{relative photo path: tools.align status}."""
    if not (aligned / "align_report.csv").is_file():
        from tools import align as align_tool

        code = align_tool.main(["--input", str(photos), "--out", str(aligned), "--size", "112", "112",
                                "--no-face", "skip", "--workers", "1"])
        if code != 0:
            raise RuntimeError(f"tools.align failed (exit {code})")
    with open(aligned / "align_report.csv", newline="") as handle:
        return {row["path"]: row["status"] for row in csv.DictReader(handle)}


def fold_pairs(cfp: Path) -> List[dict]:
    with open(cfp / "pairs_FP.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["fold"]) == FOLD]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a SavedModel, .tflite or .onnx of the face model")
    parser.add_argument("--cfp", default="../shared/data/cfp")
    parser.add_argument("--out", default="data/cfp7")
    parser.add_argument("--cli-pairs", type=int, default=10, help="pairs also run through the tools.verify command")
    args = parser.parse_args(argv)
    cfp, out = Path(args.cfp), Path(args.out)
    link_photos(cfp, out / "photos")
    statuses = align(out / "photos", out / "aligned")
    pairs = fold_pairs(cfp)

    def relative(path: str) -> str:
        return Path(path).relative_to("images").as_posix()

    detected = [row for row in pairs if all(statuses.get(relative(row[key])) == "aligned" for key in ("path1", "path2"))]
    lines = ["path1,path2,issame,fold"]
    for row in detected:
        crops = [(out / "aligned" / "112x112" / relative(row[key])).with_suffix(".png").resolve()
                 for key in ("path1", "path2")]
        sub_fold = (identity(row["path1"]) - FOLD_IDENTITIES.start) * SUB_FOLDS // len(FOLD_IDENTITIES)
        lines.append(f"{crops[0]},{crops[1]},{row['issame']},{sub_fold}")
    pairs_csv = out / "fold7_FP_detected.csv"
    atomic.write_text(pairs_csv, "\n".join(lines) + "\n")

    from tools import evaluate

    evaluate_command = ["--model", args.model, "--benchmark", f"{BENCHMARK}={pairs_csv}", "--flip", "sum",
                        "--calibrate", BENCHMARK, "--out", str(out / "report")]
    if evaluate.main(evaluate_command) != 0:
        raise RuntimeError("tools.evaluate --calibrate failed")

    analyzer = FaceAnalyzer(args.model)
    calibration = read_calibration(analyzer.embedder)
    results = []
    for number, row in enumerate(pairs):
        result = analyzer.verify(cfp / row["path1"], cfp / row["path2"])
        results.append((row, result))
        if number % 50 == 0:
            print(f"verified {number} of {len(pairs)} pairs", file=sys.stderr)
    answered = [(row, result) for row, result in results if result.same is not None]
    correct = sum(result.same == (row["issame"] == "1") for row, result in answered)

    # the decision of each detected pair from tools.evaluate's side: the crops' embeddings at the same threshold
    from tfface.embedders import load_embedder
    from tfface.data.image_io import read_rgb

    embedder = load_embedder(args.model)
    crop_lines = [line.split(",") for line in lines[1:]]
    firsts = embedder(np.stack([read_rgb(line[0]) for line in crop_lines]), flip=True)
    seconds = embedder(np.stack([read_rgb(line[1]) for line in crop_lines]), flip=True)
    crop_scores = np.sum(firsts * seconds, axis=1)
    by_pair = {(row["path1"], row["path2"]): result for row, result in answered}
    photo_scores = np.array([by_pair[(row["path1"], row["path2"])].score for row in detected])
    agree = int(np.sum((crop_scores > calibration.threshold) == (photo_scores > calibration.threshold)))

    cli_checked = []
    for row, result in answered[: args.cli_pairs]:
        code = subprocess.run([sys.executable, "-m", "tools.verify", str(cfp / row["path1"]), str(cfp / row["path2"]),
                               "--model", args.model], capture_output=True, text=True).returncode
        cli_checked.append({"pair": [row["path1"], row["path2"]], "exit": code, "analyzer_same": result.same,
                            "agrees": code == (0 if result.same else 1)})
    summary = {
        "command": "python -m experiments.photos.verify_cfp " + " ".join(argv or sys.argv[1:]),
        "evaluate_command": "python -m tools.evaluate " + " ".join(evaluate_command),
        "calibration": calibration.to_json(),
        "official_pairs": len(pairs),
        "pairs_without_a_face": len(pairs) - len(answered),
        "detected_pairs": len(detected),
        "verify_accuracy": correct / len(answered),
        "evaluate_accuracy_at_threshold": calibration.accuracy,
        "decisions_agreeing_with_crops": agree,
        "max_score_difference_photo_vs_crop": float(np.max(np.abs(photo_scores - crop_scores))),
        "cli_checked": cli_checked,
    }
    atomic.write_json(out / "verify_cfp.json", summary)
    print(f"tools.verify on {len(answered)} raw-photo pairs (of {len(pairs)}; {len(pairs) - len(answered)} with a "
          f"photo without a face): accuracy {100 * summary['verify_accuracy']:.2f}% at threshold "
          f"{calibration.threshold:.4f}; tools.evaluate at that threshold: {100 * calibration.accuracy:.2f}% "
          f"(10-fold {100 * calibration.accuracy_mean:.2f} +- {100 * calibration.accuracy_std:.2f}%); decisions equal "
          f"on {agree} of {len(detected)} pairs (max score difference {summary['max_score_difference_photo_vs_crop']:.2e}); "
          f"the tools.verify command agreed on {sum(c['agrees'] for c in cli_checked)} of {len(cli_checked)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.command(main)())
