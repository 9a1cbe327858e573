"""The arcface_torch recipes in trainers/configs/ and the polynomial learning-rate schedule they use."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tfface import backbones, heads
from tfface.builder import build_schedule
from tfface.training.config import ScheduleConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"

# arcface_torch's configs/<name>.py (deepinsight/insightface recognition/arcface_torch), written out here:
# (backbone, head, margin, sample_rate, lr, weight_decay, epochs, warmup epochs, folder, val targets)
RECIPES = {
    "ms1mv2_r50": ("iresnet50", "arcface", 0.5, 1.0, 0.1, 1e-4, 20, 0, "faces_emore", 3),
    "ms1mv3_r50": ("iresnet50", "arcface", 0.5, 1.0, 0.2, 5e-4, 25, 2, "ms1m-retinaface-t1", 3),
    "glint360k_r100": ("iresnet100", "cosface", 0.4, 1.0, 0.1, 1e-4, 20, 0, "glint360k", 3),
    "wf12m_mbf": ("mobilefacenet", "cosface", 0.4, 1.0, 0.1, 1e-4, 20, 0, "WebFace12M", 0),
    "wf42m_pfc02_r100": ("iresnet100", "cosface", 0.4, 0.2, 0.1, 5e-4, 20, 0, "WebFace42M", 3),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_with_arcface_torch_hyperparameters(name, tmp_path):
    backbone, head, margin, sample_rate, lr, decay, epochs, warmup, folder, targets = RECIPES[name]
    default = load_config(str(CONFIGS / f"{name}.yaml"))
    assert default.data.train == f"data/{folder}"
    assert all(spec.split("=")[1].startswith(f"data/{folder}/") for spec in default.evaluation.benchmarks)
    config = load_config(str(CONFIGS / f"{name}.yaml"), [f"data.train={tmp_path}"])
    assert config.data.train == str(tmp_path) and config.data.image_size == [112, 112]
    assert config.backbone.name == backbone and config.backbone.name in backbones.available()
    assert config.backbone.options["embedding_size"] == 512
    options = config.head.options
    if sample_rate < 1.0:
        assert config.head.name == "partial_fc" and options["sample_rate"] == sample_rate
        assert options["margin_head"] == head
        options = options["margin_options"]
    else:
        assert config.head.name == head
    assert options == {"scale": 64.0, "margin": margin}
    assert heads.get_head(config.head.name, 10, **config.head.options).num_classes == 10
    assert config.optimizer.name == "sgd" and config.optimizer.momentum == 0.9
    assert config.optimizer.weight_decay == pytest.approx(decay)
    assert (config.schedule.name, config.schedule.learning_rate, config.schedule.warmup_epochs) == \
        ("polynomial", lr, warmup)
    assert config.train.epochs == epochs and config.train.batch_size == 8 * 128
    assert config.train.precision == "mixed_float16"
    assert len(config.evaluation.benchmarks) == targets
    assert config.evaluation.keep_best == ("cfp_fp" if targets else None)


def test_polynomial_schedule_matches_arcface_torch_closed_form():
    """PolynomialLRWarmup._get_closed_form_lr after the warm-up: base (1 - (min(T, t) - w) / (T - w))^power; here
    by hand for 4 epochs x 10 steps, 1 warm-up epoch (w = 10, T = 40), base 0.1."""
    spec = ScheduleConfig(name="polynomial", learning_rate=0.1, warmup_epochs=1)
    linear = build_schedule(spec, steps_per_epoch=10, epochs=4)
    steps = (0, 4, 9, 10, 16, 25, 39, 40, 55)
    expected = [0.01, 0.05, 0.1, 0.1, 0.08, 0.05, 0.1 / 30, 0.0, 0.0]
    np.testing.assert_allclose([float(linear(step)) for step in steps], expected, rtol=1e-5, atol=1e-9)
    squared = build_schedule(replace(spec, power=2.0, warmup_epochs=0), steps_per_epoch=10, epochs=4)
    np.testing.assert_allclose([float(squared(step)) for step in (0, 10, 20, 30)],
                               [0.1, 0.1 * 0.75 ** 2, 0.1 * 0.5 ** 2, 0.1 * 0.25 ** 2], rtol=1e-5)
