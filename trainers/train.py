"""Train a face-recognition model from a YAML config.

    python -m trainers.train --config trainers/configs/NAME.yaml [--set key.sub=value ...]

The work dir (config `work_dir`, default runs/<name>) holds the resolved config (config.yaml), run.json (backbone
name, input shape, embedding size, class count, config hash), TensorBoard logs, a CSV history,
per-epoch checkpoints, a backup from which a killed run resumes when started again, and at the end
backbone.weights.h5 and head.weights.npz (what export and fine-tuning read).
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from tfface import cli  # noqa: E402

cli.prefer_onednn()  # before TensorFlow's first import: about 2x faster CPU training steps on AVX2 CPUs
cli.quiet_tensorflow()  # before TensorFlow's first import

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfface import atomic  # noqa: E402
from tfface.data import recordio, verify  # noqa: E402
from tfface.data.pipeline import make_dataset  # noqa: E402
from tfface.data.verify import Scan  # noqa: E402
from tfface.data.writer import read_description  # noqa: E402
from tfface.evaluation.benchmarks import Benchmark, parse_benchmark  # noqa: E402
from tfface.errors import ConfigError, check_output_folder, check_writable_folder, file_error  # noqa: E402
from tfface.builder import build_trainer, input_shape_for, steps_per_epoch_for  # noqa: E402
from tfface.training.callbacks import (  # noqa: E402
    EpochCommit,
    StopOnNonFinite,
    TrainingDiverged,
    load_layer_weights,
    save_layer_weights_atomically,
    save_weights_atomically,
    write_json_atomically,
)
from tfface.training.progress import StepProgress  # noqa: E402
from tfface.training.strategy import select_strategy  # noqa: E402
from tfface.training.verification_callback import VerificationCallback  # noqa: E402
from tfface.training import stages  # noqa: E402
from tfface.training.config import RunConfig, config_hash, load_config, save_config  # noqa: E402


class Prepared(NamedTuple):
    trainer: keras.Model
    dataset: tf.data.Dataset
    description: Dict
    steps_per_epoch: int
    strategy: tf.distribute.Strategy
    callbacks: List[keras.callbacks.Callback]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (see trainers/configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 --set head.options.margin=0.4",
    )
    cli.add_verbose_argument(parser)
    return parser.parse_args(argv)


def _verbosity(setting) -> int:
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def _init_from(trainer, run_dir: str) -> None:
    """Loads backbone (and head, when its class count matches) weights of an earlier run."""
    backbone_path = os.path.join(run_dir, "backbone.weights.h5")
    if not os.path.isfile(backbone_path):
        raise ConfigError(f"train.init_from: no backbone.weights.h5 in '{run_dir}'")
    trainer.backbone.load_weights(backbone_path)
    head_path = os.path.join(run_dir, "head.weights.npz")
    if os.path.isfile(head_path):
        try:
            load_layer_weights(trainer.head, head_path)
        except ValueError as error:
            print(f"init_from: head not loaded ({error}); starting the head from scratch")


def describe_data(data) -> Dict:
    """The description of `data.train`: an insightface folder's (train.rec) or a TFRecord data set's."""
    if recordio.is_insightface_folder(data.train, data.prefix):
        return recordio.InsightfaceFolder(data.train, data.prefix).description()
    return read_description(data.train, prefix=data.prefix)


def check_records(config: RunConfig) -> Optional[Scan]:
    """Reads every record before training (tfface.data.verify, or recordio.scan for an insightface folder). Bad
    records stop the run with one line naming the first (data.on_bad_record: error), or are left out (skip: returns
    the scan for the pipeline)."""
    data = config.data
    insightface = recordio.is_insightface_folder(data.train, data.prefix)
    scan = recordio.scan(data.train, data.prefix) if insightface else verify.scan(data.train, data.prefix)
    if not scan.bad:
        return None
    if data.on_bad_record == "error":
        raise ConfigError(
            f"data.train: {scan.bad[0].line()} ({len(scan.bad)} bad record(s) in all: python -m tools.make_tfrecords "
            f"describe {data.train} --verify lists them; --set data.on_bad_record=skip trains without them)"
        )
    print(f"data.on_bad_record=skip: leaving out {len(scan.bad)} bad record(s) ({scan.lost} unreadable), first: "
          f"{scan.bad[0].line()}")
    return scan


def requested_features(config: RunConfig, trainer) -> tuple:
    """data.features, then what the enabled plug-ins read (Plugin.required_features), each once: a recipe asks the
    data only for what its enabled parts need."""
    needed = [name for plugin in trainer.plugins for name in getattr(plugin, "required_features", ())]
    return tuple(dict.fromkeys([*config.data.features, *needed]))


def prepare(config: RunConfig) -> Prepared:
    """Everything before `fit`: data, strategy, trainer, callbacks. Bad input raises ValueError (ConfigError) naming it."""
    data = config.data
    if not data.train:
        raise ConfigError("data.train is not set (a folder written by tools.make_tfrecords or tools.synth, or an "
                          "insightface folder with train.rec, train.idx and property)")
    if not os.path.isdir(data.train):
        raise ConfigError(f"data.train: folder not found: {data.train}")
    check_output_folder(config.work_dir, "work_dir")
    check_writable_folder(config.work_dir, "work_dir")
    keras.utils.set_random_seed(config.seed)
    # the strategy before any TensorFlow op (the record scan runs some): multi-worker collectives are configured at
    # program start-up or not at all
    strategy = select_strategy(config.train.strategy)
    description = describe_data(data)
    skip = check_records(config)
    steps_per_epoch = steps_per_epoch_for(config, description["num_examples"] if skip is None else skip.good)
    input_shape = input_shape_for(config, description)
    with strategy.scope():
        trainer = build_trainer(config, description["num_classes"], steps_per_epoch, input_shape)
        if config.train.init_from:
            _init_from(trainer, config.train.init_from)
    stages.check_plugins(config.train.stages, [plugin.name for plugin in trainer.plugins])
    dataset = make_dataset(
        data.train, prefix=data.prefix, batch_size=config.train.batch_size, training=True,
        image_size=data.image_size, crop_size=data.crop_size, flip=data.flip,
        features=requested_features(config, trainer), shuffle_buffer=data.shuffle_buffer, cache=data.cache, seed=config.seed, skip=skip,
    )
    return Prepared(trainer, dataset, description, steps_per_epoch, strategy, callbacks_for(config))


def callbacks_for(config: RunConfig) -> List[keras.callbacks.Callback]:
    """The non-finite stop first (nothing is saved after a NaN), verification (its numbers join the logs the others
    write), the epoch's commit (backup, checkpoint, history.csv), TensorBoard."""
    evaluation = config.evaluation
    callbacks = [StopOnNonFinite()]
    benchmarks = [parse_benchmark(spec, flag="evaluation.benchmarks") for spec in evaluation.benchmarks]
    if evaluation.pairs_dir:
        if not os.path.isfile(os.path.join(evaluation.pairs_dir, "pairs.txt")):
            raise ConfigError(f"evaluation.pairs_dir: no pairs.txt in '{evaluation.pairs_dir}'")
        benchmarks.insert(0, Benchmark("verification", "lfw", Path(evaluation.pairs_dir)))
    if evaluation.keep_best is not None and not benchmarks:
        raise ConfigError(f"evaluation.keep_best: {evaluation.keep_best}, but no evaluation.benchmarks are set")
    if benchmarks:
        try:
            callbacks.append(VerificationCallback(
                benchmarks, every_epochs=evaluation.every_epochs, every_steps=evaluation.every_steps,
                image_size=evaluation.image_size, batch_size=evaluation.batch_size, keep_best=evaluation.keep_best,
                work_dir=config.work_dir,
            ))
        except ValueError as error:
            raise ConfigError(f"evaluation.{error}") from None
    callbacks += [
        EpochCommit(config.work_dir, checkpoints=config.train.checkpoint_every_epoch),
        keras.callbacks.TensorBoard(log_dir=os.path.join(config.work_dir, "logs"), write_graph=False),
    ]
    return callbacks


def train(config: RunConfig, prepared: Optional[Prepared] = None, extra_callbacks=()) -> keras.callbacks.History:
    """Runs (or resumes) the training described by a validated config; returns the Keras history."""
    trainer, dataset, description, steps_per_epoch, strategy, callbacks = prepared or prepare(config)
    work_dir = config.work_dir
    os.makedirs(work_dir, exist_ok=True)
    atomic.remove_stale_partial_files(work_dir)  # of a run killed before a rename
    save_config(config, os.path.join(work_dir, "config.yaml"))
    write_json_atomically(
        {
            "backbone": config.backbone.name,
            "input_shape": list(input_shape_for(config, description)),
            "embedding_size": int(trainer.backbone.output["embedding"].shape[-1]),
            "num_classes": description["num_classes"],
            "config_hash": config_hash(config),
        },
        os.path.join(work_dir, "run.json"),
    )
    print(
        f"tfface: {config.backbone.name} + {config.head.name} on {description['num_examples']} images "
        f"of {description['num_classes']} identities; {config.train.epochs} epochs x {steps_per_epoch} steps, "
        f"batch {config.train.batch_size} over {strategy.num_replicas_in_sync} replica(s); work dir {work_dir}",
        flush=True,
    )
    started = time.time()
    verbosity = _verbosity(config.train.verbose)
    # Keras' bar (verbose 1) shows steps; its epoch lines (2) do not
    progress = [StepProgress(config.train.epochs, steps_per_epoch)] if verbosity == 2 else []
    history = keras.callbacks.History()
    history.history = {}
    for first_epoch, last_epoch, stage in stages.plan(config.train.stages, config.train.epochs):
        trainer.set_stage(**(stage.arguments() if stage is not None else {"frozen": config.train.freeze}))
        if stage is not None:
            print(f"stage {stage.name} epochs {first_epoch + 1}-{last_epoch}: {stage}", flush=True)
        stage_history = trainer.fit(
            dataset,
            initial_epoch=first_epoch,
            epochs=last_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=[*callbacks, *progress, *extra_callbacks],
            verbose=verbosity,
            shuffle=False,  # the pipeline shuffles
        )
        for key, values in stage_history.history.items():
            history.history.setdefault(key, []).extend(values)
    save_weights_atomically(trainer.backbone, os.path.join(work_dir, "backbone.weights.h5"))
    save_layer_weights_atomically(trainer.head, os.path.join(work_dir, "head.weights.npz"))
    if history.history:
        last = {key: values[-1] for key, values in history.history.items()}
        summary = ", ".join(f"{key} {value:.4f}" for key, value in last.items())
        print(f"done in {time.time() - started:.0f}s: {summary}")
    else:
        print(f"nothing to train: the backup in {work_dir} says all {config.train.epochs} epochs are done")
    return history


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    try:
        config = load_config(args.config, args.overrides)
        prepared = prepare(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        train(config, prepared)
    except TrainingDiverged as error:
        print(f"error: training stopped: {error}; the backup and checkpoints of the last finite epoch are kept, "
              "nothing was exported", file=sys.stderr)
        return 1
    except (OSError, tf.errors.OpError) as error:  # a full disk under TensorBoard's writer is an OpError
        failure = error if isinstance(error, OSError) else file_error(error)
        if failure is None:
            raise
        where = f"cannot write {failure.filename}: " if failure.filename else ""
        print(f"error: {where}[Errno {failure.errno}] {failure.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
