"""Restoring a trained 3D-BERL run for the bypass drivers: the whole trainer (backbone, head, `bypass3d` branch) of
a `trainers.train` work dir with the weights of its newest (or a chosen) epoch checkpoint, and the branch's
reconstructions of a data set.

The run's final files keep only the backbone and the head; the aux nets live in the per-epoch checkpoints
(checkpoints/epoch-NNN.weights.h5, the whole trainer), so `train.checkpoint_every_epoch` must stay on.
"""
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional

import numpy as np

from tfface.branches.bypass3d import Bypass3D
from tfface.data.pipeline import make_dataset
from tfface.builder import restore_trainer
from tfface.training.trainer import FaceTrainer


class BypassRun(NamedTuple):
    trainer: FaceTrainer
    branch: Bypass3D
    config: Dict
    input_shape: tuple  # (H, W, 3) the backbone reads
    checkpoint: Path


def load_bypass_run(work_dir, checkpoint: Optional[str] = None) -> BypassRun:
    """The run's trainer (`restore_trainer`: it must have a `bypass3d` branch) and that branch."""
    trainer, config, path = restore_trainer(work_dir, checkpoint, branch="bypass3d")
    branch = next(branch for branch in trainer.branches if isinstance(branch, Bypass3D))
    return BypassRun(trainer, branch, config, tuple(trainer.backbone.input_shape[1:]), path)


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
