"""Restoring a trained 3D-BERL run for the bypass tools: the whole trainer (backbone, head, `bypass3d` branch) from
a work dir of `trainers.train`, with the weights of its newest (or a chosen) epoch checkpoint.

The run's final files keep only the backbone and the head; the aux nets live in the per-epoch checkpoints
(checkpoints/epoch-NNN.weights.h5, the whole trainer), so `train.checkpoint_every_epoch` must stay on.
"""
import json
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional

import numpy as np

from tfface.branches.bypass3d import Bypass3D
from tfface.data.pipeline import make_dataset
from tfface.errors import ConfigError
from tfface.training.builder import build_trainer
from tfface.training.config import load_config
from tfface.training.trainer import FaceTrainer


class BypassRun(NamedTuple):
    trainer: FaceTrainer
    branch: Bypass3D
    config: Dict
    input_shape: tuple  # (H, W, 3) the backbone reads
    checkpoint: Path


def newest_checkpoint(work_dir) -> Path:
    """The last epoch's checkpoint of a work dir (ConfigError naming the folder when there is none)."""
    checkpoints = sorted((Path(work_dir) / "checkpoints").glob("epoch-*.weights.h5"))
    if not checkpoints:
        raise ConfigError(f"{Path(work_dir) / 'checkpoints'}: no epoch-*.weights.h5 (the aux nets are only in the "
                          f"per-epoch checkpoints; train with train.checkpoint_every_epoch: true)")
    return checkpoints[-1]


def load_bypass_run(work_dir, checkpoint: Optional[str] = None) -> BypassRun:
    """Rebuilds the trainer of `work_dir` from its config.yaml and run.json and loads `checkpoint` (default: newest).

    The config must have a `bypass3d` branch; errors name the file or field at fault.
    """
    work_dir = Path(work_dir)
    for name in ("config.yaml", "run.json"):
        if not (work_dir / name).is_file():
            raise ConfigError(f"{work_dir}: no {name} (is it the work dir of a trainers.train run?)")
    config = load_config(str(work_dir / "config.yaml"))  # over today's defaults: keys added since still resolve
    try:
        run = json.loads((work_dir / "run.json").read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{work_dir / 'run.json'}: not JSON: {error}") from None
    if not any(entry.get("name") == "bypass3d" for entry in config.branches):
        raise ConfigError(f"{work_dir / 'config.yaml'}: no 'bypass3d' entry under branches")
    input_shape = tuple(int(size) for size in run["input_shape"])
    trainer = build_trainer(config, int(run["num_classes"]), 1, input_shape)
    path = Path(checkpoint) if checkpoint else newest_checkpoint(work_dir)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        trainer.load_weights(str(path))
    except ValueError as error:
        raise ConfigError(f"{path}: does not fit the trainer of {work_dir / 'config.yaml'}: {error}") from None
    branch = next(branch for branch in trainer.branches if isinstance(branch, Bypass3D))
    return BypassRun(trainer, branch, config, input_shape, path)


def reconstructions(run: BypassRun, data_dir, prefix: str, batch_size: int = 32, features=(), limit=None
                    ) -> Iterator[Dict[str, np.ndarray]]:
    """Batches of `branch.reconstruct` outputs (numpy) for the examples of data_dir/prefix, in written order, each
    with the data's "label" and requested `features` (e.g. "depth", "light") added as "data_label", "data_depth", ...;
    `limit` caps the number of examples."""
    dataset = make_dataset(data_dir, prefix=prefix, batch_size=batch_size, image_size=run.input_shape[:2],
                           training=False, features=tuple(features))
    seen = 0
    for batch in dataset:
        if limit is not None and seen >= limit:
            return
        features_out = run.trainer.backbone(batch["image"], training=False)
        result = {key: np.asarray(value) for key, value in run.branch.reconstruct(batch["image"], features_out).items()}
        result.update({f"data_{key}": batch[key].numpy() for key in ("label", *features)})
        if limit is not None and seen + len(result["data_label"]) > limit:
            result = {key: value[: limit - seen] for key, value in result.items()}
        seen += len(result["data_label"])
        yield result
