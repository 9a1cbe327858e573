"""Export a training run's embedding path for inference: a SavedModel in TF Serving's layout, a TFLite or an ONNX file.

    python -m tools.export --work_dir runs/arcface --out models/arcface/1 [--with_tflite]
    python -m tools.export --work_dir runs/arcface --format tflite [--quantize dynamic|float16] --out models/af.tflite
    python -m tools.export --work_dir runs/arcface --format onnx --out models/arcface.onnx --parity_pairs pairs.csv

A SavedModel's --out ends in the version number that TF Serving (and serving.server) load; it must not exist yet.
See tfface/export.py for its signatures and metadata. A .tflite or .onnx file keeps the same contract (uint8 RGB
in, L2-normalised embedding out) and gets FILE.json beside it; before it is written it is run by its own runtime
against the SavedModel (on the images of --parity_pairs, a pairs CSV `path1,path2,issame[,fold]`, else on SynthFaces
renders): a float32 file more than 1e-4 away is not written (exit code 1). See tfface/deploy.py. --with_tflite adds
such a float32 model.tflite (checked the same way) to the SavedModel's version folder, for serving.server
--prefer_tflite_model.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from tfface import cli  # noqa: E402

cli.quiet_tensorflow()  # before TensorFlow's first import

from tfface.deploy import (  # noqa: E402
    FILE_FORMATS,
    QUANTIZE_MODES,
    ParityError,
    export_file,
    export_run_with_tflite,
)
import tensorflow as tf  # noqa: E402

from tfface.errors import ConfigError, check_output_folder, file_error  # noqa: E402
from tfface.evaluation import read_pairs_csv  # noqa: E402
from tfface.export import export_run, load_exported  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work_dir", required=True, help="training work dir (run.json, config.yaml, backbone.weights.h5)"
    )
    parser.add_argument("--out", required=True, help="savedmodel: models/NAME/VERSION; else a .tflite/.onnx file")
    parser.add_argument("--format", default="savedmodel", choices=("savedmodel", *FILE_FORMATS))
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, help="tflite only: dynamic (int8 weights) or float16")
    parser.add_argument("--parity_pairs", help="tflite/onnx: pairs CSV of real aligned faces for the parity check")
    cli.add_verbose_argument(parser)
    parser.add_argument("--with_tflite", action="store_true",
                        help="savedmodel: also write model.tflite into the version folder (--prefer_tflite_model)")
    return parser.parse_args(argv)


def export_savedmodel(args: argparse.Namespace) -> str:
    out = Path(args.out)
    if not out.name.isdigit():
        raise ConfigError(f"--out must end in a numeric version folder (models/NAME/VERSION), got '{args.out}'")
    for flag in ("quantize", "parity_pairs"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag} is for --format tflite or onnx, not savedmodel")
    check_output_folder(out.parent, "--out", args.out)
    tflite = export_run_with_tflite(args.work_dir, out) if args.with_tflite else None
    if tflite is None:
        export_run(args.work_dir, out)
    model = load_exported(out)
    copy = ("" if tflite is None else f" with {tflite['file']} ({tflite['size_bytes'] / 1e6:.2f} MB, parity on "
            f"{tflite['parity']['source']}: max |diff| {tflite['parity']['max_abs_diff']:.2e})")
    return (f"exported {model.metadata['backbone']} ({model.input_shape[0]}x{model.input_shape[1]} -> "
            f"{model.embedding_size}-d embedding, config {model.metadata['config_hash']}) to {out}{copy}")


def export_deployable(args: argparse.Namespace) -> str:
    out = Path(args.out)
    if args.with_tflite:
        raise ConfigError("--with_tflite is for --format savedmodel; --format tflite writes the .tflite file itself")
    check_output_folder(out.parent, "--out", args.out)
    pairs = None if args.parity_pairs is None else read_pairs_csv(args.parity_pairs)
    metadata = export_file(args.work_dir, out, args.format, args.quantize, pairs)
    checked = metadata["parity"]
    accuracy = ("" if "accuracy_exported" not in checked else
                f", accuracy {100 * checked['accuracy_exported']:.2f}% (SavedModel "
                f"{100 * checked['accuracy_savedmodel']:.2f}%)")
    kind = args.format + (f" {args.quantize}" if args.quantize else "")
    return (f"exported {metadata['backbone']} as {kind} ({metadata['size_bytes'] / 1e6:.2f} MB) to {out}; parity on "
            f"{checked['source']}: max |diff| {checked['max_abs_diff']:.2e}{accuracy}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        print(export_savedmodel(args) if args.format == "savedmodel" else export_deployable(args))
    except cli.USER_ERRORS as error:  # before OSError: a missing input (FileNotFoundError) is no write failure
        return cli.user_error(error)
    except ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: --out {args.out}: cannot write: {error}", file=sys.stderr)
        return 2
    except tf.errors.OpError as error:  # SaveV2 or the graph's write on a full disk
        failure = file_error(error)
        if failure is None:
            raise
        print(f"error: --out {args.out}: cannot write: [Errno {failure.errno}] {failure.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
