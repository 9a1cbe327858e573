"""Batch 1:1 verification of a face model on standard benchmarks, written as a report.

    python -m tools.evaluate --model models/NAME/VERSION --benchmark lfw=DIR --benchmark cfp_fp=PATH.bin \\
        --benchmark cfp=CFP_DIR:FP --benchmark mine=pairs.csv --flip sum --pca 0 --out REPORT_DIR

The model is any SavedModel whose `serving_default` signature takes one uint8 tensor [N, H, W, 3] (RGB) and
returns one embedding tensor [N, D], whatever their names; H and W are read from the signature, and the images
of every benchmark are resized to them. --model may also be a model base path (the newest numeric version), or a
.tflite or .onnx file with the same contract (`tools.export --format tflite|onnx` writes them), run by LiteRT or
onnxruntime: what a deployment runs (tfface.embedders).

A benchmark's kind comes from its value: a folder with pairs.txt is LFW (one folder per identity beside it), a
.bin file an insightface verification set, a folder with Protocol/ CFP (":FF" or ":FP" after it picks the
protocol, FP by default), a .csv file a pairs CSV (path1,path2,issame[,fold]). Each distinct image is embedded
once (and once mirrored with --flip sum|concat; a bare --flip is sum, the default), decoded and batched by a
tf.data pipeline ahead of the model (tfface.evaluation.pipeline); pairs are scored with
`tfface.evaluation.evaluate_pairs`, using the benchmark's own folds when it defines them (else --folds contiguous
folds) and, with --pca N, a PCA fitted on the training folds only.

REPORT_DIR gets report.json (per benchmark accuracy_mean, accuracy_std, auc, eer, best_threshold, val, far,
tar_at_far, pairs, images, seconds; the model's metadata and the command), report.md and roc_NAME.png. A previous
report there is deleted once the options are checked, so a run that fails leaves none behind.
With --calibrate NAME [--far 1e-3], the decision thresholds of benchmark NAME (best accuracy, and the threshold at
the FAR, on cosine similarity; tfface.calibration) go into report.json and into --model's metadata (a SavedModel's
assets.extra/tfface_metadata.json, FILE.json beside a .tflite or .onnx), where tfface.faces, tools.verify and
tools.gallery read them.
Bad input is one line `error: ...` on stderr and exit code 2; a failed gRPC call with --target, exit code 1.

    python -m tools.evaluate --target HOST:PORT --model_name NAME --benchmark ... --out REPORT_DIR

evaluates the same way through a TF Serving target (serving.server or tensorflow_model_server), via
`serving.client.embed_files`.
"""
import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from tfface import cli  # noqa: E402

cli.prefer_onednn()  # before TensorFlow's first import: faster CPU inference on AVX2 CPUs
cli.quiet_tensorflow()  # before TensorFlow's first import

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402
from tqdm import tqdm  # noqa: E402

from serving import client  # noqa: E402
from tfface.calibration import Calibration, calibrate, write_calibration  # noqa: E402
from tfface.embedders import DEFAULT_SIGNATURE, load_embedder  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402
from tfface.evaluation import (  # noqa: E402
    combine_flip,
    evaluate_pairs,
    roc_curve,
    squared_distances,
)
from tfface.evaluation.pipeline import image_batches, named_decode_error  # noqa: E402
from tfface.evaluation.benchmarks import (  # noqa: E402
    KIND_HELP,
    Benchmark,
    BenchmarkPairs,
    parse_benchmark,
    read_benchmark,
)
from tfface.evaluation.report import RocCurve, remove_report, verification_entry, write_report  # noqa: E402

FLIP_CHOICES = ("sum", "concat", "none")
VAL_FAR_TARGET = 1e-3
FORMATS_EPILOG = """benchmark formats:
  pairs CSV  path1,path2,issame[,fold]: header row optional; paths relative to the CSV's folder; issame 1/0,
             true/false or yes/no; fold a 0-based integer (the folds to use; without it --folds contiguous folds)
  LFW        DIR/pairs.txt (View 2: a header "10 300", then per fold 300 lines "name n1 n2" and 300 lines
             "name1 n1 name2 n2"), images DIR/name/name_0001.jpg (or .png)
  .bin       insightface's verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin): pickled (encoded images,
             issame flags), images 2i and 2i+1 a pair; read without running pickle code
  CFP        DIR with Protocol/Pair_list_F.txt, Pair_list_P.txt and Protocol/Split/FF|FP/01..10/same.txt,diff.txt
             (the data set as distributed); DIR:FF or DIR:FP picks the protocol (FP by default)
Images of every kind are resized to the model's input: give aligned faces (tools.align)."""


class ServingEmbedder:
    """`serving_default` of model `model_name` at a TF Serving gRPC `target` (host:port), through
    `serving.client.predict`: uint8 images [N, H, W, 3] at input_size (H, W, from GetModelMetadata) -> float32
    embeddings [N, D]."""

    def __init__(self, target: str, model_name: str):
        self.model_name = model_name
        self._channel = client.connect(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._spec = client.InputSpec(self._stub, model_name, DEFAULT_SIGNATURE, version=None, timeout=60.0)
        self.input_size = tuple(self._spec.size)
        self.description = {
            "source": f"{model_name} at {target}",
            "input_size": list(self.input_size),
            "embedding_size": None,  # known after the first call
            "signature": {"input": self._spec.input_key, "output": self._spec.output_key},
        }

    def embed_batch(self, images) -> np.ndarray:
        embeddings = client.predict(self._stub, self._spec, self.model_name, np.asarray(images))
        self.description["embedding_size"] = int(embeddings.shape[1])
        return embeddings


def make_embedder(args: argparse.Namespace):
    """The embedder of --model, or of --target and --model_name."""
    if args.target is not None:
        return ServingEmbedder(args.target, args.model_name)
    return load_embedder(args.model, label="--model")


def embed_distinct_images(
    embed: Callable[[tf.Tensor], np.ndarray], pairs: BenchmarkPairs, image_size: Tuple[int, int], flip: str,
    batch_size: int, label: str
) -> np.ndarray:
    """Embeddings of the distinct images, [n_images, D] ("none", "sum") or [n_images, 2D] ("concat"), with a
    progress bar; "sum" and "concat" fuse each image's embedding with its mirror's (`combine_flip`). `embed` maps a
    uint8 batch [n, H, W, 3] (a tf.Tensor from the pipeline) to [n, D]."""
    plain, mirrored = [], []
    batches = iter(image_batches(pairs.source, image_size, batch_size, mirror=flip != "none"))
    with tqdm(total=pairs.n_images, desc=label, unit="image", file=sys.stderr) as progress:
        for start in range(0, pairs.n_images, batch_size):
            try:
                batch = next(batches)
            except tf.errors.OpError as error:
                raise named_decode_error(list(pairs.source[start : start + batch_size]), image_size, error) from None
            if flip != "none":
                batch, mirrored_batch = batch
            plain.append(embed(batch))
            if flip != "none":
                mirrored.append(embed(mirrored_batch))
            progress.update(len(batch))
    if flip == "none":
        return np.concatenate(plain)
    return combine_flip(np.concatenate(plain), np.concatenate(mirrored), mode=flip)


def evaluate_benchmark(
    benchmark: Benchmark, embedder, flip: str, pca: int, n_folds: int, batch_size: int,
    calibrate_far: Optional[float] = None
) -> Tuple[Dict, RocCurve]:
    """Report entry of one benchmark (kind, path and `verification_entry`'s numbers) and its ROC (FPR, TPR) on
    cosine similarity; with `calibrate_far`, the entry's "calibration" is the decision thresholds of its pairs
    (tfface.calibration, FAR target `calibrate_far`)."""
    started = time.perf_counter()
    try:
        pairs = read_benchmark(benchmark, embedder.input_size)
        embeddings = embed_distinct_images(embedder.embed_batch, pairs, embedder.input_size, flip, batch_size,
                                           benchmark.name)
        first, second = embeddings[pairs.first], embeddings[pairs.second]
        metrics = evaluate_pairs(first, second, pairs.issame, n_folds=n_folds, folds=pairs.folds, pca_components=pca,
                                 far_target=VAL_FAR_TARGET)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"benchmark {benchmark.name}: {error}") from None
    cosines = 1.0 - squared_distances(first, second) / 2.0
    fpr, tpr, _ = roc_curve(cosines, pairs.issame)
    entry = {
        "kind": benchmark.kind,
        "path": str(benchmark.path),
        **verification_entry(metrics, len(pairs.issame), pairs.n_images, time.perf_counter() - started,
                             negative_pairs=int(np.sum(~np.asarray(pairs.issame, bool)))),
    }
    if calibrate_far is not None:
        entry["calibration"] = calibrate(
            cosines, pairs.issame, benchmark.name, str(benchmark.path), flip, entry["accuracy_mean"],
            entry["accuracy_std"], far_target=calibrate_far).to_json()
    return entry, (fpr, tpr)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0],
                                     epilog=FORMATS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="SavedModel folder (models/NAME/VERSION), model base path, .tflite or .onnx")
    source.add_argument("--target", help="TF Serving gRPC target HOST:PORT (with --model_name)")
    parser.add_argument("--model_name", help="model name on the serving target")
    parser.add_argument(
        "--benchmark", action="append", required=True, metavar="NAME=PATH", help=f"repeatable; PATH is {KIND_HELP}"
    )
    parser.add_argument(
        "--flip", nargs="?", const="sum", choices=FLIP_CHOICES, default="sum",
        help="fuse each embedding with its mirrored image's: sum (insightface; also a bare --flip), concat, none",
    )
    parser.add_argument("--pca", type=int, default=0, help="PCA components fitted on training folds (0: none)")
    parser.add_argument("--folds", type=int, default=10, help="contiguous folds for benchmarks that define none")
    parser.add_argument(
        "--batch-size", "--batch_size", dest="batch_size", type=int, default=64, help="images per model call"
    )
    parser.add_argument("--out", required=True, help="report folder")
    cli.add_verbose_argument(parser)
    parser.add_argument("--calibrate", metavar="NAME",
                        help="store the decision thresholds of benchmark NAME in --model's metadata (tfface.calibration)")
    parser.add_argument("--far", type=float, default=VAL_FAR_TARGET,
                        help=f"with --calibrate: the false accept rate of the second threshold (default {VAL_FAR_TARGET})")
    return parser.parse_args(argv)


def out_folder(argv: List[str]) -> Optional[str]:
    """--out's value in an `argv` that fails to parse as a whole; None when it cannot be told."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--out")
    try:
        return parser.parse_known_args(argv)[0].out
    except (argparse.ArgumentError, SystemExit):
        return None


def check_settings(args: argparse.Namespace) -> None:
    """Raises ConfigError naming the first bad option."""
    if args.pca < 0:
        raise ConfigError(f"--pca must be >= 0, got {args.pca}")
    if args.folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {args.folds}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.target is not None and not args.model_name:
        raise ConfigError("--target needs --model_name (the model's name on the serving target)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out is a file, not a folder: {args.out}")
    if args.calibrate is not None:
        if args.target is not None:
            raise ConfigError("--calibrate writes into the model's files: it needs --model, not --target")
        if args.flip not in ("sum", "none") or args.pca:
            raise ConfigError("--calibrate needs --flip sum or none and --pca 0 (what tools.verify and tfface.faces "
                              "compute)")
        if not 0.0 < args.far < 1.0:
            raise ConfigError(f"--far must be in (0, 1), got {args.far}")


def summary_line(name: str, entry: Dict) -> str:
    return (
        f"{name}: accuracy {100 * entry['accuracy_mean']:.2f} ± {100 * entry['accuracy_std']:.2f}%, "
        f"AUC {entry['auc']:.4f}, EER {100 * entry['eer']:.2f}% ({entry['pairs']} pairs, {entry['images']} images, "
        f"{entry['seconds']:.1f} s)"
    )


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except SystemExit as stop:
        if stop.code:  # a bad argument: an earlier report in --out must not pass for this run's
            remove_report(out_folder(argv))
        raise
    # first: whatever fails below (an argument check included) leaves no earlier report looking like this run's
    remove_report(args.out)
    tf.get_logger().setLevel("ERROR")
    try:
        check_settings(args)
        benchmarks = [parse_benchmark(spec) for spec in args.benchmark]
        names = [benchmark.name for benchmark in benchmarks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"--benchmark name(s) given more than once: {', '.join(repeated)}")
        if args.calibrate is not None and args.calibrate not in names:
            raise ConfigError(f"--calibrate {args.calibrate}: no --benchmark of that name (given: {', '.join(names)})")
        embedder = make_embedder(args)
        entries, curves = {}, {}
        for benchmark in benchmarks:
            entries[benchmark.name], curves[benchmark.name] = evaluate_benchmark(
                benchmark, embedder, args.flip, args.pca, args.folds, args.batch_size,
                calibrate_far=args.far if benchmark.name == args.calibrate else None
            )
            print(summary_line(benchmark.name, entries[benchmark.name]))
        if args.calibrate is not None:
            calibration = Calibration(**entries[args.calibrate]["calibration"])
            written = write_calibration(args.model, calibration)
            print(f"calibrated on {args.calibrate}: threshold {calibration.threshold:.4f} (accuracy "
                  f"{100 * calibration.accuracy:.2f}% on its {calibration.pairs} pairs), {calibration.far_threshold:.4f} "
                  f"at FAR {calibration.far_target:g} (measured FAR {calibration.far:.4f}, TAR {calibration.tar:.4f}); "
                  f"written to {written}")
    except grpc.RpcError as error:
        print(f"error: --target {args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    report = {
        "command": shlex.join(["python", "-m", "tools.evaluate", *argv]),
        "model": embedder.description,
        "settings": {
            "flip": args.flip,
            "pca": args.pca,
            "folds": args.folds,
            "batch_size": args.batch_size,
            "val_far_target": VAL_FAR_TARGET,
        },
        "benchmarks": entries,
    }
    print(f"report: {write_report(args.out, report, curves)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
