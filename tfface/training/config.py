"""Training configuration: typed sections with their defaults, YAML loading, `--set key.sub=value` overrides, and
validation, once, in `load_config`.

Files and overrides are merged as nested dicts; every key a user writes must exist in DEFAULTS (so a typo is one clear
error naming the key), except under the free-form option maps listed in OPEN_KEYS, which are checked by the builder
that receives them (a backbone, head, regularizer or branch rejects an option it does not take, by name). The merged
dict then becomes a RunConfig: every value is checked for its type and range (tfface.training.fields).
"""
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import yaml

from tfface import atomic
from tfface.errors import ConfigError, cut, shown

from tfface.training import fields as check
from tfface.training.precision import PRECISIONS
from tfface.training.stages import FREEZABLE_PARTS, Stage, parse_stages
from tfface.training.strategy import STRATEGIES

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("piecewise", "cosine", "polynomial", "constant")
BAD_RECORD_ACTIONS = ("error", "skip")
RATE_PARTS = ("backbone", "head")


@dataclass
class BackboneConfig(check.Section):
    name: str = check.field("iresnet50", check.text)  # tfface.backbones.available()
    options: Dict[str, Any] = check.field({}, check.mapping)  # checked by the backbone


@dataclass
class HeadConfig(check.Section):
    name: str = check.field("arcface", check.text)  # tfface.heads.available()
    options: Dict[str, Any] = check.field({}, check.mapping)  # checked by the head


@dataclass
class DataConfig(check.Section):
    # folder with <prefix>-*.tfrecord and <prefix>.json (tools.make_tfrecords, tools.synth)
    train: Optional[str] = check.field(None, check.optional(check.text))
    prefix: str = check.field("train", check.text)
    # [H, W] resize before cropping; default: the stored size
    image_size: Optional[List[int]] = check.field(None, check.optional(check.size))
    # [H, W] random crop in training (the network input); default: no crop
    crop_size: Optional[List[int]] = check.field(None, check.optional(check.size))
    flip: bool = check.field(True, check.boolean)
    shuffle_buffer: int = check.field(4096, check.integer(1, 10 ** 7))
    cache: Union[bool, str] = check.field(False, check.one_of(check.boolean, check.text))  # true: memory; a path: file
    # extra features the plug-ins read: landmarks, pose, light, true_label, depth, albedo, ...
    features: List[str] = check.field([], check.names)
    # a bad record (unreadable, no label or image, label out of range, undecodable image): error stops before
    # training naming it; skip leaves it out and logs the count per epoch as skipped_records
    on_bad_record: str = check.field("error", check.choice(BAD_RECORD_ACTIONS))


@dataclass
class TrainConfig(check.Section):
    epochs: int = check.field(10, check.integer(1, check.MAX_EPOCHS))
    batch_size: int = check.field(128, check.integer(1, 1 << 20))  # global batch, split across replicas
    # default: examples // batch
    steps_per_epoch: Optional[int] = check.field(None, check.optional(check.integer(1, 10 ** 9)))
    freeze: List[str] = check.field([], check.names_from(FREEZABLE_PARTS))  # parts the main optimizer leaves alone
    stages: List[Stage] = check.field([], parse_stages)  # trained one after the other; see tfface.training.stages
    init_from: Optional[str] = check.field(None, check.optional(check.text))  # a run dir to fine-tune from
    # auto: multi_worker under a TF_CONFIG cluster, else mirrored when more than one device is visible
    strategy: str = check.field("auto", check.choice(STRATEGIES))
    # float32 | mixed_float16 (with loss scaling) | mixed_bfloat16; heads stay float32
    precision: str = check.field("float32", check.choice(PRECISIONS))
    checkpoint_every_epoch: bool = check.field(True, check.boolean)
    # auto: progress bar on a terminal, one line per epoch otherwise
    verbose: Union[str, int] = check.field("auto", check.choice(("auto", 0, 1, 2)))


@dataclass
class OptimizerConfig(check.Section):
    name: str = check.field("sgd", check.choice(OPTIMIZERS))
    momentum: float = check.field(0.9, check.number(0.0, 1.0, high_open=True))
    nesterov: bool = check.field(False, check.boolean)
    weight_decay: float = check.field(5e-4, check.number(0.0, 1.0))
    beta_1: float = check.field(0.9, check.number(0.0, 1.0, high_open=True))
    beta_2: float = check.field(0.999, check.number(0.0, 1.0, high_open=True))
    epsilon: float = check.field(1e-7, check.number(0.0, 1.0, low_open=True))
    clipnorm: Optional[float] = check.field(None, check.optional(check.number(0.0, 1e6, low_open=True)))
    # per-part rates, {backbone: 0.1} (sgd): the part's gradients times the factor, i.e. its rate times the factor
    learning_rate_multipliers: Dict[str, float] = check.field({}, check.factors_for(RATE_PARTS, 0.0, 1e3))


@dataclass
class ScheduleConfig(check.Section):
    name: str = check.field("piecewise", check.choice(SCHEDULES))
    learning_rate: float = check.field(0.1, check.number(0.0, check.MAX_LEARNING_RATE, low_open=True))
    warmup_epochs: float = check.field(0.0, check.number(0.0, check.MAX_EPOCHS))
    # piecewise: epochs where the rate times `decay`
    boundaries: List[float] = check.field([], check.numbers(0.0, check.MAX_EPOCHS))
    decay: float = check.field(0.1, check.number(0.0, 1e3, low_open=True))
    min_learning_rate: float = check.field(0.0, check.number(0.0, check.MAX_LEARNING_RATE))  # cosine: floor
    power: float = check.field(1.0, check.number(0.0, 1e3, low_open=True))  # polynomial: (1 - progress)^power


@dataclass
class EvaluationConfig(check.Section):
    pairs_dir: Optional[str] = check.field(None, check.optional(check.text))  # LFW layout, logged as verification_*
    # NAME=PATH as tools.evaluate's --benchmark: a .bin, an LFW folder, a pairs CSV, a CFP folder (arcface_torch's
    # val_targets); logged as NAME_accuracy, NAME_accuracy_std, NAME_auc
    benchmarks: List[str] = check.field([], check.names)
    every_epochs: int = check.field(1, check.integer(1, check.MAX_EPOCHS))
    # set: every N optimizer steps
    every_steps: Optional[int] = check.field(None, check.optional(check.integer(1, 1 << 40)))
    # a benchmark's NAME (or `verification` for pairs_dir): the best backbone by its accuracy kept in work_dir/best/
    keep_best: Optional[str] = check.field(None, check.optional(check.text))
    image_size: Optional[List[int]] = check.field(None, check.optional(check.size))
    batch_size: int = check.field(64, check.integer(1, 1 << 16))


@dataclass
class RunConfig(check.Section):
    """A resolved, validated config: typed sections; plug-in lists stay maps checked by the plug-ins."""

    name: str = check.field("run", check.text)
    work_dir: Optional[str] = check.field(None, check.optional(check.text))  # default: runs/<name>
    seed: int = check.field(0, check.integer(0, 2 ** 32 - 1))  # numpy's seeds are 32-bit
    backbone: BackboneConfig = check.section(BackboneConfig)
    head: HeadConfig = check.section(HeadConfig)
    data: DataConfig = check.section(DataConfig)
    train: TrainConfig = check.section(TrainConfig)
    optimizer: OptimizerConfig = check.section(OptimizerConfig)
    schedule: ScheduleConfig = check.section(ScheduleConfig)
    # {name, weight, warmup_epochs, warmup_per (epoch|step), options, enabled}
    regularizers: List[Dict[str, Any]] = check.field([], check.plugin_list)
    # {name, weight, warmup_epochs, warmup_per, optimizer, options, enabled}
    branches: List[Dict[str, Any]] = check.field([], check.plugin_list)
    gate: Optional[Dict[str, Any]] = check.field(None, check.optional(check.mapping))  # {name, options, enabled}
    evaluation: EvaluationConfig = check.section(EvaluationConfig)


DEFAULTS: Dict[str, Any] = RunConfig().to_dict()

# Keys whose values are free-form maps or lists of maps checked by the code that consumes them.
OPEN_KEYS = {"backbone.options", "head.options", "regularizers", "branches", "gate",
             "optimizer.learning_rate_multipliers"}

# Plug-in lists. Every entry (and the gate) takes `enabled: false` to leave it out of the run, so one config can hold
# every method and the command line switches each off: `--set branches.aprn.enabled=false --set gate.enabled=false`
# (an entry is addressed by its name or its index).
PLUGIN_LISTS = {"regularizers", "branches"}


def _merge(base: Dict[str, Any], update: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{path}'")
        if isinstance(base[key], dict) and path not in OPEN_KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            merged[key] = _merge(base[key], value, prefix=f"{path}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


MAX_YAML_VALUES = 100_000  # values a config may hold once its aliases are expanded (a "billion laughs" holds 10^9)


def load_yaml(stream) -> Any:
    """yaml.safe_load, refusing a document whose aliases expand to more than MAX_YAML_VALUES values (ValueError): the
    config is deep-copied, merged, hashed and saved, each of which expands them."""
    value = yaml.safe_load(stream)
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ValueError(f"more than {MAX_YAML_VALUES} values once its aliases (*name) are expanded")
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item
    return value


def yaml_problem(error: Exception) -> str:
    """A YAML parser error on one line: what is wrong and where (line and column, counted from 1)."""
    problem = cut(getattr(error, "problem", None) or " ".join(str(error).split()), 200)
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_override(text: str) -> Dict[str, Any]:
    """'train.epochs=3' -> {'train': {'epochs': 3}} (the value is read as YAML: numbers, lists, null, ...)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key.sub=value, got '{text}'")
    dotted, raw = text.split("=", 1)
    if not dotted:
        raise ConfigError(f"--set expects key.sub=value, got '{text}'")
    try:
        value = load_yaml(raw) if raw else None
    except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer of more than 4300 digits
        raise ConfigError(f"--set {dotted}: invalid YAML value {shown(raw)}: {yaml_problem(error)}") from None
    nested: Dict[str, Any] = value
    for key in reversed(dotted.split(".")):
        nested = {key: nested}
    return nested


def _set_dotted(config: Dict[str, Any], override: Dict[str, Any], prefix: str = "") -> None:
    """Applies one parsed override; a map value sets its keys one by one; inside OPEN_KEYS maps the keys are set as
    given, and `{}` empties the map (`head.options={}` before another head's options); in the PLUGIN_LISTS an entry
    is addressed by its name or index (`branches.aprn.enabled=false`, `regularizers.0.weight=2`)."""
    for key, value in override.items():
        path = f"{prefix}{key}"
        inside_open = any(prefix.startswith(f"{open_key}.") for open_key in OPEN_KEYS)
        opens = inside_open or path in OPEN_KEYS
        if key not in config and not inside_open:
            raise ConfigError(f"unknown config key '{path}'")
        if isinstance(value, dict) and path in PLUGIN_LISTS and isinstance(config.get(key), list):
            for entry_key, entry_value in value.items():
                index = _plugin_index(config[key], str(entry_key), path)
                if isinstance(entry_value, dict) and isinstance(config[key][index], dict):
                    _set_dotted(config[key][index], entry_value, prefix=f"{path}.{entry_key}.")
                else:
                    config[key][index] = entry_value
        elif isinstance(value, dict) and isinstance(config.get(key), dict) and (value or not opens):
            _set_dotted(config[key], value, prefix=f"{path}.")
        else:  # a value, or `{}` for an open map: `--set head.options={}` empties it
            config[key] = value


def _plugin_index(entries: List[Any], key: str, path: str) -> int:
    """Index of the entry of list `path` named `key` (its `name`), or `key` itself when it is an index."""
    if key.isdigit():
        if int(key) >= len(entries):
            raise ConfigError(f"'{path}.{key}': {path} has {len(entries)} entries")
        return int(key)
    matches = [index for index, entry in enumerate(entries) if isinstance(entry, dict) and entry.get("name") == key]
    if len(matches) != 1:
        names = [entry.get("name") for entry in entries if isinstance(entry, dict)]
        found = "several entries" if matches else "no entry"
        raise ConfigError(f"'{path}.{key}': {found} named '{key}' in {path} (entries: {', '.join(map(str, names))})")
    return matches[0]


def _read_yaml(path: str, seen: tuple = ()) -> Dict[str, Any]:
    """A config file as a dict, with its `base` (a path relative to the file) merged underneath, recursively; a loop
    is found on the files' real paths, however spelled."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.realpath(path) in seen:
        raise ConfigError(f"{path}: `base` loops back to itself")
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = load_yaml(handle) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {error.start}: {error.reason})") from None
    except (yaml.YAMLError, ValueError) as error:
        raise ConfigError(f"{path}: invalid YAML: {yaml_problem(error)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the config must be a mapping at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: {shown(base)} is not allowed (expected the path of a config file)")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
    return _overlay(_read_yaml(base_path, (*seen, os.path.realpath(path))), loaded)


def _overlay(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: Optional[str], overrides: Iterable[str] = ()) -> RunConfig:
    """Defaults <- YAML file (over its `base` files) <- overrides -> the validated config, work_dir set. A value of
    the wrong type or range is a ConfigError naming the key, the value and what is allowed."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        loaded = _read_yaml(path)
        try:
            config = _merge(config, loaded)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        if "name" not in loaded:
            config["name"] = Path(path).stem
    for text in overrides:
        _set_dotted(config, parse_override(text))
    if config["work_dir"] is None:
        config["work_dir"] = os.path.join("runs", str(config["name"]))
    run = RunConfig.from_dict(config)
    if run.train.stages:  # `train.epochs` is the stages' sum
        run.train.epochs = sum(stage.epochs for stage in run.train.stages)
    return run


def config_hash(config: RunConfig) -> str:
    """A short stable hash of the resolved config (exported with models)."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_config(config: RunConfig, path: str) -> None:
    """Writes the resolved config as YAML, atomically."""
    atomic.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
