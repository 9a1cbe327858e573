"""Config loading, overrides, schedules and the shipped configs."""
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tfface import backbones, heads
from tfface.errors import ConfigError
from tfface.builder import build_optimizer, build_schedule, build_trainer
from tfface.training.config import DEFAULTS, OptimizerConfig, ScheduleConfig, load_config, parse_override
from tfface.training.plugins import LossWeight

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "trainers" / "configs"
# the general recipes and every experiment's reproduction configs
SHIPPED = [*CONFIG_DIR.glob("*.yaml"), *REPO.glob("experiments/*/configs/*.yaml")]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_overrides_are_parsed_as_yaml_values():
    assert parse_override("train.epochs=3") == {"train": {"epochs": 3}}
    assert parse_override("data.crop_size=[28, 28]") == {"data": {"crop_size": [28, 28]}}
    assert parse_override("train.init_from=null") == {"train": {"init_from": None}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("train.epochs")


def test_file_then_overrides_then_defaults(tmp_path):
    path = write(tmp_path / "mine.yaml", "head: {name: cosface, options: {margin: 0.4}}\ntrain: {epochs: 2}\n")
    config = load_config(path, ["train.batch_size=16", "head.options.scale=30"])
    assert config["name"] == "mine" and config["work_dir"] == "runs/mine"
    assert config["head"].to_dict() == {"name": "cosface", "options": {"margin": 0.4, "scale": 30}}
    assert config["train"]["epochs"] == 2 and config["train"]["batch_size"] == 16
    assert config["optimizer"].to_dict() == DEFAULTS["optimizer"]


def test_an_empty_map_clears_open_options_only(tmp_path):
    """`--set head.options={}` empties the head's options (to switch to a head that takes others); a key set inside
    a map merges; `{}` for a closed section changes nothing."""
    path = write(tmp_path / "mine.yaml", "head: {name: arcface, options: {scale: 64.0, margin: 0.5}}\n")
    assert load_config(path, ["head.name=softmax", "head.options={}"])["head"].to_dict() == {"name": "softmax", "options": {}}
    switched = load_config(path, ["head.name=sphereface", "head.options={}", "head.options.margin=4"])
    assert switched["head"].to_dict() == {"name": "sphereface", "options": {"margin": 4}}
    assert load_config(path, ["head.options={margin: 0.3}"])["head"]["options"] == {"scale": 64.0, "margin": 0.3}
    assert load_config(path, ["train={}"])["train"] == load_config(path)["train"]


def test_unknown_keys_are_named(tmp_path):
    path = write(tmp_path / "typo.yaml", "train: {epoch: 2}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'train.epoch'"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown config key 'optimiser'"):
        load_config(None, ["optimiser.name=sgd"])
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.yaml"):
        load_config(str(tmp_path / "nowhere.yaml"))


def test_invalid_yaml_is_one_line_naming_the_file_or_the_override(tmp_path):
    path = write(tmp_path / "broken.yaml", "train: {epochs: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid YAML: ") and message.endswith("line 2, column 1") and "\n" not in message
    with pytest.raises(ConfigError) as caught:
        parse_override("train.stages=[{epochs: 1}")
    message = str(caught.value)
    assert message.startswith("--set train.stages: invalid YAML value '[{epochs: 1}': ") and "\n" not in message


def test_base_files_are_merged_underneath(tmp_path):
    write(tmp_path / "base.yaml", "head: {name: arcface, options: {scale: 64.0, margin: 0.5}}\ntrain: {epochs: 20}\n")
    path = write(tmp_path / "child.yaml", "base: base.yaml\nhead: {options: {margin: 0.3}}\n")
    config = load_config(path)
    assert config["head"].to_dict() == {"name": "arcface", "options": {"scale": 64.0, "margin": 0.3}}
    assert config["train"]["epochs"] == 20


def test_schedules_match_hand_computed_rates():
    spec = ScheduleConfig(learning_rate=0.1, warmup_epochs=1, boundaries=[2, 3], decay=0.1)
    piecewise = build_schedule(spec, steps_per_epoch=10, epochs=4)
    rates = [float(piecewise(step)) for step in (0, 4, 9, 10, 19, 20, 29, 30, 39)]
    np.testing.assert_allclose(rates, [0.01, 0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)

    cosine = build_schedule(replace(spec, name="cosine", warmup_epochs=0, min_learning_rate=0.0), 10, 4)
    for step in (0, 10, 20, 40):
        np.testing.assert_allclose(float(cosine(step)), 0.05 * (1 + math.cos(math.pi * step / 40)), rtol=1e-5)
    with pytest.raises(ConfigError, match="unknown schedule 'linear'"):
        build_schedule(replace(spec, name="linear"), 10, 4)


def test_loss_weight_warms_up_linearly():
    weight = LossWeight(2.0, warmup_steps=10)
    np.testing.assert_allclose([float(weight(s)) for s in (0, 5, 10, 50)], [0.0, 1.0, 2.0, 2.0])


def test_optimizers_from_config():
    sgd = build_optimizer(OptimizerConfig(), 0.1)
    assert type(sgd).__name__ == "SGD" and sgd.momentum == 0.9 and sgd.weight_decay == 5e-4
    adamw = build_optimizer(OptimizerConfig(name="adamw", weight_decay=0.01), 1e-3)
    assert type(adamw).__name__ == "AdamW" and adamw.weight_decay == 0.01
    with pytest.raises(ConfigError, match="optimizer.name: unknown optimizer 'lamb'"):
        build_optimizer(OptimizerConfig(name="lamb"), 0.1)


def test_learning_rate_multipliers_are_checked_per_part():
    config = load_config(None, ["optimizer.learning_rate_multipliers={backbone: 0.1}"])
    assert config.optimizer.learning_rate_multipliers == {"backbone": 0.1}
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate_multipliers: .* not allowed \(expected a map from "
                                          r"backbone, head"):
        load_config(None, ["optimizer.learning_rate_multipliers={neck: 0.1}"])
    with pytest.raises(ConfigError, match="optimizer.learning_rate_multipliers: .* not allowed"):
        load_config(None, ["optimizer.learning_rate_multipliers={head: -1}"])
    adam = load_config(None, ["optimizer.name=adam", "optimizer.learning_rate_multipliers={backbone: 0.1}",
                              "backbone.name=tiny"])
    with pytest.raises(ConfigError, match="optimizer.learning_rate_multipliers: only with sgd"):
        build_trainer(adam, num_classes=4, steps_per_epoch=1, input_shape=(16, 16, 3))


@pytest.mark.parametrize("path", sorted(p for p in SHIPPED if not p.name.startswith("_")), ids=str)
def test_every_shipped_config_resolves_and_names_real_parts(path):
    config = load_config(str(path))
    assert config["backbone"]["name"] in backbones.available()
    head = heads.get_head(config["head"]["name"], 10, **config["head"]["options"])
    assert head.num_classes == 10
