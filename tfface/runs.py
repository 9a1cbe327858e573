"""A training run's work dir, as `trainers.train` writes it, read back in one place.

    WORK_DIR/config.yaml                      the resolved config
             run.json                         backbone, input_shape [H, W, 3], embedding_size, num_classes, config_hash
             backbone.weights.h5              the final backbone
             head.weights.npz                 the final head (get_weights order)
             checkpoints/epoch-NNN.weights.h5 the whole trainer after epoch NNN (train.checkpoint_every_epoch)

Every problem is a ConfigError naming the folder, file or field. Rebuilding the whole trainer of a run is
`tfface.builder.restore_trainer` (it needs the builder, which sits above every plug-in; this module sits below them,
so the teacher gate can read its teacher's run).
"""
import json
from pathlib import Path
from typing import Dict

import keras
import yaml

from tfface import backbones
from tfface.errors import ConfigError
from tfface.training.callbacks import non_finite_weights
from tfface.training.config import load_config

CONFIG = "config.yaml"
RUN_JSON = "run.json"
BACKBONE_WEIGHTS = "backbone.weights.h5"
HEAD_WEIGHTS = "head.weights.npz"
RUN_JSON_KEYS = ("backbone", "input_shape", "embedding_size", "config_hash")


def require(work_dir, *names: str) -> Path:
    """`work_dir` as a Path, after checking that it holds each of `names`."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise ConfigError(f"work dir not found: {work_dir}")
    for name in names:
        if not (work_dir / name).is_file():
            raise ConfigError(f"{work_dir}: no {name} (is it the work dir of a training run?)")
    return work_dir


def read_config(work_dir) -> Dict:
    """The run's config.yaml resolved over today's defaults (keys added since the run still resolve)."""
    return load_config(str(require(work_dir, CONFIG) / CONFIG))


def read_run_json(work_dir) -> Dict:
    """run.json as a dict, with the fields every run has (RUN_JSON_KEYS) checked."""
    path = require(work_dir, RUN_JSON) / RUN_JSON
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON: {error}") from None
    return _checked(run, path)


def _checked(run: Dict, path: Path) -> Dict:
    missing = [key for key in RUN_JSON_KEYS if key not in run]
    if missing:
        raise ConfigError(f"{path}: missing field(s) {', '.join(missing)}")
    return run


def num_classes(work_dir) -> int:
    """The class count of the run's head (run.json's num_classes)."""
    count = read_run_json(work_dir).get("num_classes")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{Path(work_dir) / RUN_JSON}: num_classes must be a positive integer, got {count!r}")
    return count


def read_run(work_dir) -> Dict:
    """What the backbone of a finished run needs: run.json plus the backbone options from its config.yaml.

    Returns {backbone, backbone_options, input_shape [H, W, 3], embedding_size, config_hash}.
    """
    work_dir = require(work_dir, RUN_JSON, CONFIG, BACKBONE_WEIGHTS)
    try:
        run = json.loads((work_dir / RUN_JSON).read_text())
        with open(work_dir / CONFIG) as handle:
            config = yaml.safe_load(handle) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{work_dir}: unreadable run.json or config.yaml: {error}") from None
    _checked(run, work_dir / RUN_JSON)
    options = config.get("backbone", {}).get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{work_dir / CONFIG}: backbone.options must be a mapping, got {options!r}")
    return {
        "backbone": run["backbone"],
        "backbone_options": options,
        "input_shape": [int(size) for size in run["input_shape"]],
        "embedding_size": int(run["embedding_size"]),
        "config_hash": run["config_hash"],
    }


def build_backbone(run: Dict, weights_path=None) -> keras.Model:
    """The backbone `run` (a `read_run` dict) describes, with the weights of `weights_path` (None: freshly
    initialised); with weights, its embedding size must match run.json."""
    options = {**run["backbone_options"], "input_shape": tuple(run["input_shape"])}
    backbone = backbones.get_backbone(run["backbone"], **options)
    if weights_path is None:
        return backbone
    try:
        backbone.load_weights(str(weights_path))
    except ValueError as error:
        raise ConfigError(f"{weights_path}: does not fit backbone '{run['backbone']}' {options}: {error}") from None
    broken = non_finite_weights(backbone)
    if broken:
        raise ConfigError(
            f"{weights_path}: {len(broken)} weight(s) hold NaN or infinity ({', '.join(broken[:3])}): the run "
            "diverged; export an earlier checkpoint's run or train again with a lower learning rate"
        )
    size = int(backbone.output["embedding"].shape[-1])
    if size != run["embedding_size"]:
        raise ConfigError(f"run.json says embedding_size {run['embedding_size']} but the backbone gives {size}")
    return backbone


def load_backbone(work_dir) -> keras.Model:
    """The finished run's trained backbone."""
    return build_backbone(read_run(work_dir), Path(work_dir) / BACKBONE_WEIGHTS)


def newest_checkpoint(work_dir) -> Path:
    """The last epoch's checkpoint (the whole trainer: head, branches and their aux nets, which the final files
    leave out)."""
    folder = Path(work_dir) / "checkpoints"
    checkpoints = sorted(folder.glob("epoch-*.weights.h5"))
    if not checkpoints:
        raise ConfigError(f"{folder}: no epoch-*.weights.h5 (branches are only in the per-epoch checkpoints; "
                          f"train with train.checkpoint_every_epoch: true)")
    return checkpoints[-1]
