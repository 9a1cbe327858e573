"""Are the faces of two photos the same person?

    python -m tools.verify A.jpg B.jpg --model models/NAME/VERSION [--threshold best|far|NUMBER] [--json]

Photos, not crops: the face nearest each photo's centre is detected (MTCNN), aligned as tools.align aligns and
embedded by the model (SavedModel, .tflite or .onnx), then compared by cosine similarity against the model's
calibrated threshold (`tools.evaluate --calibrate`; "best" accuracy by default, "far" for the one at its FAR
target) or a number. Prints one line: score, threshold (and where it comes from), decision. Exit status: 0 same
person, 1 different, 2 an error in one line on stderr (no face found in A, an unreadable photo, a model without a
calibrated threshold and no number given). `--json` prints the result as JSON instead.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfface import cli  # noqa: E402
from tfface.data.image_io import UnreadableImageError  # noqa: E402
from tfface.faces import THRESHOLD_CHOICES, FaceAnalyzer  # noqa: E402
from tools.annotate import add_detector_arguments, check_detector_arguments  # noqa: E402

EXIT_SAME, EXIT_DIFFERENT = 0, 1


def threshold_value(text: str):
    """'best', 'far' or a float."""
    if text in THRESHOLD_CHOICES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected best, far or a number, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("photo_a", metavar="A", help="first photo")
    parser.add_argument("photo_b", metavar="B", help="second photo")
    parser.add_argument("--model", required=True, help="SavedModel folder or base path, .tflite or .onnx file")
    parser.add_argument("--threshold", type=threshold_value, default="best",
                        help="best (default) or far: the model's calibrated thresholds; or a cosine similarity")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_detector_arguments(parser)
    return parser


def threshold_source(analyzer: FaceAnalyzer, choice) -> str:
    """Where the threshold comes from, for the printed line."""
    if not isinstance(choice, str):
        return "given"
    calibration = analyzer.calibration
    if choice == "far":
        return f"FAR {calibration.far_target:g} on {calibration.benchmark}"
    return f"best accuracy on {calibration.benchmark}"


@cli.command(name="verify", errors=(*cli.USER_ERRORS, UnreadableImageError))
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_detector_arguments(args)
    for name, path in (("A", args.photo_a), ("B", args.photo_b)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"photo {name} not found: {path}")
    analyzer = FaceAnalyzer(args.model, threshold=args.threshold, min_face_size=args.min_face_size,
                            max_side=args.max_side, device=args.device, max_pixels=args.max_pixels)
    analyzer.threshold  # a model without a calibration and no number given fails here, before detection
    result = analyzer.verify(args.photo_a, args.photo_b)
    if result.missing:
        paths = {"A": args.photo_a, "B": args.photo_b}
        named = " and ".join(f"{name} ({paths[name]})" for name in result.missing.split(" and "))
        raise ValueError(f"no face found in {named}")
    if args.json:
        print(json.dumps({"a": args.photo_a, "b": args.photo_b, "score": result.score, "threshold": result.threshold,
                          "threshold_source": threshold_source(analyzer, args.threshold), "same": result.same,
                          "faces": list(result.faces)}))
    else:
        print(f"score {result.score:.4f}, threshold {result.threshold:.4f} "
              f"({threshold_source(analyzer, args.threshold)}): "
              f"{'same person' if result.same else 'different people'}")
    return EXIT_SAME if result.same else EXIT_DIFFERENT


if __name__ == "__main__":
    sys.exit(main())
