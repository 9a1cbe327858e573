"""`tiny`: a few-thousand-parameter backbone for unit tests of everything that consumes a backbone.

stem: conv3x3 stride 1; stage1..4: conv3x3 stride 2; each conv (no bias) + BN + ReLU with `width` channels.
Output: BN - Flatten - Dropout - FC - BN(gamma fixed at 1), as in IResNet. Strided convs use Keras "same" padding.
Spatial sizes for an HxW input: stem HxW, stage k ceil(H / 2^k) x ceil(W / 2^k); any H, W >= 16 works
(28, 32, 48, 64, 112 ...).
"""
from typing import Optional, Sequence

import keras

from tfface.backbones.blocks import backbone_model, batch_norm, check_options, fc_embedding, image_input


def _conv_bn_relu(x, width: int, strides: int, name: str, sync_batchnorm: bool):
    x = keras.layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn", sync_batchnorm)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def tiny(
    input_shape: Sequence[int] = (32, 32, 3),
    embedding_size: int = 16,
    dropout: float = 0.0,
    sync_batchnorm: bool = False,
    width: int = 8,
    name: Optional[str] = None,
) -> keras.Model:
    """Builds the tiny test backbone; `width` is the channel count of every conv."""
    input_shape = check_options(input_shape, embedding_size, dropout)
    if int(width) < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    image = image_input(input_shape)
    stem = _conv_bn_relu(image, width, 1, "stem", sync_batchnorm)
    stages = [stem]
    for index in range(1, 5):
        stages.append(_conv_bn_relu(stages[-1], width, 2, f"stage{index}", sync_batchnorm))
    x = batch_norm("output_bn", sync_batchnorm)(stages[-1])
    embedding = fc_embedding(x, embedding_size, dropout, sync_batchnorm)
    return backbone_model(image, stages, embedding, name or "tiny")
