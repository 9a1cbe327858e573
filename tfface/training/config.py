"""Training configuration: defaults, YAML loading, `--set key.sub=value` overrides and validation.

A config is a nested dict. Every key a user writes must exist in DEFAULTS (so a typo is one clear error naming the
key), except under the free-form option maps listed in OPEN_KEYS, which are checked by the builder that receives them
(a backbone, head, regularizer or branch rejects an option it does not take, by name).
"""
import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

from tfface.errors import ConfigError

DEFAULTS: Dict[str, Any] = {
    "name": "run",
    "work_dir": None,  # default: runs/<name>
    "seed": 0,
    "backbone": {"name": "iresnet50", "options": {}},
    "head": {"name": "arcface", "options": {}},
    "data": {
        "train": None,  # folder with <prefix>-*.tfrecord and <prefix>.json (tools.make_tfrecords, tools.synth)
        "prefix": "train",
        "image_size": None,  # [H, W] resize before cropping; default: the stored size
        "crop_size": None,  # [H, W] random crop in training (the network input); default: no crop
        "flip": True,
        "shuffle_buffer": 4096,
        "cache": False,
        "features": [],  # extra features the plug-ins read: landmarks, pose, light, true_label, depth, albedo, ...
    },
    "train": {
        "epochs": 10,
        "batch_size": 128,  # global batch, split across replicas
        "steps_per_epoch": None,  # default: examples // batch_size
        "freeze": [],  # parts the main optimizer leaves alone: backbone, head
        "stages": [],  # optional schedule of stages, each {epochs, freeze, identity_loss, plugins}; see STAGE_KEYS
        "init_from": None,  # a weights file (.weights.h5) to start from, e.g. a baseline to fine-tune
        "strategy": "auto",  # auto (multi_worker under a TF_CONFIG cluster, else mirrored when more than one
        # device is visible) | mirrored | multi_worker | default
        "precision": "float32",  # float32 | mixed_float16 (with loss scaling) | mixed_bfloat16; heads stay float32
        "checkpoint_every_epoch": True,
        "verbose": "auto",  # auto: progress bar on a terminal, one line per epoch otherwise
    },
    "optimizer": {
        "name": "sgd",  # sgd | adam | adamw
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "clipnorm": None,
    },
    "schedule": {
        "name": "piecewise",  # piecewise | cosine | constant
        "learning_rate": 0.1,
        "warmup_epochs": 0.0,
        "boundaries": [],  # piecewise: epochs at which the rate is multiplied by `decay`
        "decay": 0.1,
        "min_learning_rate": 0.0,  # cosine: floor
    },
    "regularizers": [],  # list of {name, weight, warmup_epochs, warmup_per (epoch|step), options, enabled}
    "branches": [],  # list of {name, weight, warmup_epochs, warmup_per, optimizer, options, enabled}
    "gate": None,  # {name, options, enabled}
    "evaluation": {
        "pairs_dir": None,  # an LFW-layout folder with pairs.txt, verified every `every_epochs`
        "every_epochs": 1,
        "image_size": None,
        "batch_size": 64,
    },
}

# A stage of `train.stages` (trained one after the other in one run; `train.epochs` becomes their sum):
# epochs (required), freeze (parts left alone, default none), identity_loss (default true),
# plugins (names of the regularizers/branches that run, default all).
STAGE_KEYS = {"name", "epochs", "freeze", "identity_loss", "plugins"}

# Keys whose values are free-form maps or lists of maps checked by the code that consumes them.
OPEN_KEYS = {"backbone.options", "head.options", "regularizers", "branches", "gate"}

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


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parser error on one line: what is wrong and where (line and column, counted from 1)."""
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
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
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {dotted}: invalid YAML value '{raw}': {yaml_problem(error)}") from None
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
    """A config file as a dict, with its `base` (a path relative to the file) merged underneath, recursively."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"{path}: `base` loops back to itself")
    with open(path) as handle:
        try:
            loaded = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {yaml_problem(error)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the config must be a mapping at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    return _overlay(_read_yaml(os.path.join(os.path.dirname(path), base), (*seen, path)), loaded)


def _overlay(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: Optional[str], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults <- YAML file (over its `base` files) <- overrides; returns the resolved config with work_dir set."""
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
        config["work_dir"] = os.path.join("runs", config["name"])
    _resolve_stages(config)
    return config


def _resolve_stages(config: Dict[str, Any]) -> None:
    """Checks `train.stages` and sets `train.epochs` to the sum of their epochs."""
    stages = config["train"]["stages"]
    if not stages:
        return
    for index, stage in enumerate(stages):
        key = f"train.stages[{index}]"
        if not isinstance(stage, dict) or "epochs" not in stage:
            raise ConfigError(f"{key}: each stage needs 'epochs', got {stage!r}")
        unknown = set(stage) - STAGE_KEYS
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(STAGE_KEYS))}")
        if not isinstance(stage["epochs"], int) or stage["epochs"] < 1:
            raise ConfigError(f"{key}.epochs must be a positive integer, got {stage['epochs']!r}")
    config["train"]["epochs"] = sum(stage["epochs"] for stage in stages)


def config_hash(config: Dict[str, Any]) -> str:
    """A short stable hash of the resolved config (exported with models)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_config(config: Dict[str, Any], path: str) -> None:
    """Writes the resolved config as YAML, atomically."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    os.replace(temporary, path)
