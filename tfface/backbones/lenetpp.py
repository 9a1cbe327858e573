"""LeNet++ of the center-loss paper (Wen et al. 2016), for toy experiments with 2-D features.

Three blocks of two conv5x5 (stride 1, "same") + PReLU with 32, 64, 128 channels, each followed by a 2x2 max-pool
(stride 2, Caffe's ceil mode), then Dropout - FC(embedding_size, bias) from the last pooled map, as in the paper.
LeNet++ downsamples only 3 times, so stage4 is an added parameter-free 2x2 max-pool of stage3 that only feeds the
branches reading it, leaving the embedding path exactly LeNet++. It has no batch norm (`sync_batchnorm` changes
nothing). Maps, default 28x28x3 input (grey replicated to 3 channels): stem = conv1 pair 28x28x32,
stage1 = pool1, conv2 pair 14x14x64, stage2 = pool2, conv3 pair 7x7x128, stage3 = pool3 4x4x128 (the FC input),
stage4 2x2x128.
"""
from typing import Optional, Sequence

import keras

from tfface.backbones.blocks import backbone_model, check_options, image_input, prelu

BLOCK_WIDTHS = (32, 64, 128)


def _conv_pair(x, filters: int, name: str):
    for index in (1, 2):
        x = keras.layers.Conv2D(filters, 5, padding="same", name=f"{name}_{index}")(x)
        x = prelu(f"{name}_{index}_prelu")(x)
    return x


def lenetpp(
    input_shape: Sequence[int] = (28, 28, 3),
    embedding_size: int = 2,
    dropout: float = 0.0,
    sync_batchnorm: bool = False,
    name: Optional[str] = None,
) -> keras.Model:
    """Builds LeNet++; default input 28x28x3, 2-D embedding."""
    del sync_batchnorm  # LeNet++ has no batch norm; accepted for the common builder interface
    input_shape = check_options(input_shape, embedding_size, dropout)
    image = image_input(input_shape)
    stem = _conv_pair(image, BLOCK_WIDTHS[0], "conv1")
    pool1 = keras.layers.MaxPooling2D(2, padding="same", name="pool1")(stem)
    stage1 = _conv_pair(pool1, BLOCK_WIDTHS[1], "conv2")
    pool2 = keras.layers.MaxPooling2D(2, padding="same", name="pool2")(stage1)
    stage2 = _conv_pair(pool2, BLOCK_WIDTHS[2], "conv3")
    stage3 = keras.layers.MaxPooling2D(2, padding="same", name="pool3")(stage2)
    stage4 = keras.layers.MaxPooling2D(2, padding="same", name="pool4")(stage3)
    x = keras.layers.Flatten(name="embedding_flatten")(stage3)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    embedding = keras.layers.Dense(embedding_size, name="embedding")(x)
    return backbone_model(image, [stem, stage1, stage2, stage3, stage4], embedding, name or "lenetpp")
