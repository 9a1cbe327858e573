"""Builds a compiled FaceTrainer, its optimizers and its schedule from a validated RunConfig (training/config.py), and
rebuilds the whole trainer of a finished run (restore_trainer). The composition root: it imports every plug-in
package (backbones, heads, regularizers, branches, gates) and the training core they build on."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from tfface import backbones, heads, runs
from tfface.branches import BRANCHES
from tfface.errors import ConfigError
from tfface.gates import GATES
from tfface.regularizers import REGULARIZERS
from tfface.training import fields as check
from tfface.training.config import DEFAULTS, OPTIMIZERS, HeadConfig, OptimizerConfig, RunConfig, ScheduleConfig
from tfface.training.precision import precision_scope, wrap_optimizer
from tfface.training.schedules import WarmupSchedule
from tfface.training.strategy import select_strategy  # noqa: F401  (re-exported for the CLIs)
from tfface.training.trainer import FaceTrainer

PLUGIN_KEYS = {"name", "weight", "warmup_epochs", "warmup_per", "options", "optimizer", "enabled"}
WARMUP_UNITS = ("epoch", "step")
GATE_KEYS = {"name", "options", "enabled"}


def build_optimizer(spec: OptimizerConfig, learning_rate, key: str = "optimizer") -> keras.optimizers.Optimizer:
    """spec: the `optimizer` section; learning_rate: float or schedule."""
    weight_decay = spec.weight_decay or None
    common = {"learning_rate": learning_rate, "clipnorm": spec.clipnorm}
    if spec.name == "sgd":
        return keras.optimizers.SGD(momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=weight_decay, **common)
    adam_options = {"beta_1": spec.beta_1, "beta_2": spec.beta_2, "epsilon": spec.epsilon}
    if spec.name == "adam":
        return keras.optimizers.Adam(weight_decay=weight_decay, **adam_options, **common)
    if spec.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=weight_decay or 0.004, **adam_options, **common)
    raise ConfigError(f"{key}.name: unknown optimizer '{spec.name}'; available: {', '.join(OPTIMIZERS)}")


def build_schedule(spec: ScheduleConfig, steps_per_epoch: int, epochs: int) -> WarmupSchedule:
    """The `schedule` section with epochs converted to optimizer steps."""
    try:
        return WarmupSchedule(
            kind=spec.name,
            learning_rate=spec.learning_rate,
            total_steps=steps_per_epoch * epochs,
            warmup_steps=int(round(spec.warmup_epochs * steps_per_epoch)),
            boundaries=[int(round(epoch * steps_per_epoch)) for epoch in spec.boundaries],
            decay=spec.decay,
            min_learning_rate=spec.min_learning_rate,
            power=spec.power,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _build_plugin(registry, spec: Dict[str, Any], key: str, steps_per_epoch: int, **extra):
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{key}: each entry needs a 'name', got {spec!r}")
    unknown = set(spec) - PLUGIN_KEYS
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(sorted(unknown))} for '{spec['name']}'")
    warmup_per = spec.get("warmup_per", "epoch")
    if warmup_per not in WARMUP_UNITS:
        raise ConfigError(f"{key}.warmup_per must be one of {', '.join(WARMUP_UNITS)}, got {warmup_per!r}")
    return registry.build(
        spec["name"],
        name=spec["name"],
        weight=spec.get("weight", 1.0),
        warmup_steps=int(round(spec.get("warmup_epochs", 0) * steps_per_epoch)),
        warmup_every=steps_per_epoch if warmup_per == "epoch" else 1,  # Eq. 15 of paper 004: t counts epochs
        **extra,
        **spec.get("options", {}),
    )


def is_enabled(spec: Any, key: str) -> bool:
    """False when a plug-in entry (regularizer, branch, gate) is switched off with `enabled: false`."""
    enabled = spec.get("enabled", True) if isinstance(spec, dict) else True
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled must be true or false, got {enabled!r}")
    return enabled


def enabled_entries(entries: Sequence[Any], key: str) -> List[Tuple[int, Any]]:
    """(index, entry) of the entries of list `key` (regularizers, branches) that are enabled."""
    return [(index, spec) for index, spec in enumerate(entries) if is_enabled(spec, f"{key}[{index}]")]


def input_shape_for(config: RunConfig, description: Dict[str, Any]) -> Sequence[int]:
    """(H, W, 3) fed to the backbone: crop size, else resize size, else the stored image size."""
    size = config.data.crop_size or config.data.image_size or description["image_size"]
    return (int(size[0]), int(size[1]), 3)


def build_trainer(config: RunConfig, num_classes: int, steps_per_epoch: int, input_shape: Sequence[int]) -> FaceTrainer:
    """Builds and compiles the trainer; call inside the strategy scope. Every part is built before it returns.

    Every layer is constructed under `train.precision`'s dtype policy (margin heads stay float32); under
    mixed_float16 the optimizers scale the loss (tfface.training.precision).
    """
    with precision_scope(config.train.precision):
        return _build_trainer(config, num_classes, steps_per_epoch, input_shape)


def restore_trainer(work_dir, checkpoint=None, branch: Optional[str] = None) -> Tuple[FaceTrainer, RunConfig, Path]:
    """The whole trainer of training run `work_dir`, rebuilt from its config.yaml and run.json, with the weights of
    `checkpoint` (default: the newest epoch checkpoint). `branch`: a branch name the run must have.

    Returns (trainer, the run's resolved config, the checkpoint loaded); errors name the file or field at fault.
    """
    config = runs.read_config(work_dir)
    config_path = Path(work_dir) / runs.CONFIG
    if branch and not any(entry.get("name") == branch for entry in config.branches):
        raise ConfigError(f"{config_path}: no '{branch}' entry under branches")
    input_shape = tuple(int(size) for size in runs.read_run_json(work_dir)["input_shape"])
    trainer = build_trainer(config, runs.num_classes(work_dir), 1, input_shape)
    path = Path(checkpoint) if checkpoint else runs.newest_checkpoint(work_dir)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        trainer.load_weights(str(path))
    except ValueError as error:
        raise ConfigError(f"{path}: does not fit the trainer of {config_path}: {error}") from None
    return trainer, config, path


def _build_head(spec: HeadConfig, num_classes: int):
    """The margin head; options it does not take are a ConfigError naming head.options (a head switched with
    `--set head.name=...` keeps the config's options: `--set head.options={}` clears them)."""
    name, options = spec.name, spec.options
    if name in heads.available():
        try:
            return heads.get_head(name, num_classes, **options)
        except (TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(
                f"head '{name}' with head.options {options}: {error} (a head switched with --set head.name keeps "
                "the config's options; --set head.options={} clears them)"
            ) from None
    return heads.get_head(name, num_classes, **options)


def _build_trainer(config: RunConfig, num_classes: int, steps_per_epoch: int, input_shape: Sequence[int]) -> FaceTrainer:
    precision = config.train.precision
    backbone_options = {"input_shape": tuple(input_shape), **config.backbone.options}
    backbone = backbones.get_backbone(config.backbone.name, **backbone_options)
    head = _build_head(config.head, num_classes)
    regularizers = [
        _build_plugin(REGULARIZERS, spec, f"regularizers[{index}]", steps_per_epoch)
        for index, spec in enabled_entries(config.regularizers, "regularizers")
    ]
    branches = []
    for index, spec in enabled_entries(config.branches, "branches"):
        optimizer = _branch_optimizer(spec, f"branches[{index}]", precision)
        branches.append(_build_plugin(BRANCHES, spec, f"branches[{index}]", steps_per_epoch, optimizer=optimizer))
    gate = None
    if config.gate and is_enabled(config.gate, "gate"):
        gate_spec = config.gate
        if "name" not in gate_spec:
            raise ConfigError(f"gate: needs a 'name', got {gate_spec!r}")
        unknown = set(gate_spec) - GATE_KEYS
        if unknown:
            raise ConfigError(f"gate: unknown key(s) {', '.join(sorted(unknown))} for '{gate_spec['name']}'")
        gate = GATES.build(gate_spec["name"], **gate_spec.get("options", {}))
    multipliers = config.optimizer.learning_rate_multipliers
    if multipliers and config.optimizer.name != "sgd":
        raise ConfigError(f"optimizer.learning_rate_multipliers: only with sgd ({config.optimizer.name} normalises the "
                          "gradient's scale away)")
    trainer = FaceTrainer(
        backbone, head, regularizers=regularizers, branches=branches, gate=gate, frozen=config.train.freeze,
        count_skipped_records=config.data.on_bad_record == "skip", learning_rate_multipliers=multipliers,
    )
    schedule = build_schedule(config.schedule, steps_per_epoch, config.train.epochs)
    trainer.compile(optimizer=wrap_optimizer(build_optimizer(config.optimizer, schedule), precision))
    trainer.build_all(input_shape)
    return trainer


def _branch_optimizer(spec, key: str, precision: str) -> Optional[keras.optimizers.Optimizer]:
    """A branch's own optimizer from its `optimizer` map ({name, learning_rate, momentum, ...}, constant rate);
    None when the map is absent: the main optimizer then trains the branch's cooperative variables."""
    optimizer_spec = spec.get("optimizer") if isinstance(spec, dict) else None
    if optimizer_spec is None:
        return None
    if not isinstance(optimizer_spec, dict):
        raise ConfigError(f"{key}.optimizer: {optimizer_spec!r} is not allowed (expected a mapping)")
    options = {"weight_decay": 0.0, **optimizer_spec}
    learning_rate = check.number(0.0, check.MAX_LEARNING_RATE, low_open=True)(
        f"{key}.optimizer.learning_rate", options.pop("learning_rate", 1e-3))
    unknown = set(options) - set(DEFAULTS["optimizer"]) | {"learning_rate_multipliers"} & set(options)
    if unknown:
        raise ConfigError(f"{key}.optimizer: unknown key(s) {', '.join(sorted(unknown))}")
    spec = OptimizerConfig.from_dict(options, prefix=f"{key}.optimizer.")
    return wrap_optimizer(build_optimizer(spec, learning_rate, key=f"{key}.optimizer"), precision)


def steps_per_epoch_for(config: RunConfig, num_examples: int) -> int:
    if config.train.steps_per_epoch:
        return config.train.steps_per_epoch
    steps = num_examples // config.train.batch_size
    if steps == 0:
        raise ConfigError(f"train.batch_size {config.train.batch_size} is larger than the data set ({num_examples} examples)")
    return steps
