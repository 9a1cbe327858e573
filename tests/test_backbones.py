"""Backbones: registry, output contract (keys, shapes), parameter counts against insightface, BN options."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from tfface.backbones import BACKBONES, available, get_backbone
from tfface.backbones.blocks import STAGE_KEYS

OUTPUT_KEYS = set(STAGE_KEYS) | {"embedding"}


def _output_shapes(model, input_shape, batch=2):
    outputs = model(np.zeros((batch, *input_shape), "float32"), training=False)
    assert set(outputs) == OUTPUT_KEYS
    return {key: tuple(value.shape) for key, value in outputs.items()}


@pytest.mark.parametrize("size", [28, 32, 48, 64, 112])
def test_tiny_runs_at_many_input_sizes(size):
    model = get_backbone("tiny", input_shape=(size, size, 3))
    shapes = _output_shapes(model, (size, size, 3))
    assert shapes["stem"] == (2, size, size, 8)
    for stage in range(1, 5):
        side = size
        for _ in range(stage):
            side = -(-side // 2)
        assert shapes[f"stage{stage}"] == (2, side, side, 8)
    assert shapes["embedding"] == (2, 16)
    assert model.count_params() < 10_000


def test_tiny_options_width_embedding_and_input_name():
    model = get_backbone("tiny", width=4, embedding_size=5, name="small")
    assert model.name == "small"
    assert [tensor.name for tensor in model.inputs] == ["image"]
    assert model.inputs[0].dtype == "float32"
    shapes = _output_shapes(model, (32, 32, 3))
    assert shapes["stage4"] == (2, 2, 2, 4) and shapes["embedding"] == (2, 5)
