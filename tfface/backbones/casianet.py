"""CASIA-Net (Yi et al. 2014, "Learning Face Representation from Scratch"), the small backbone of APRN.

Five blocks of two conv3x3 (stride 1) with 32-64, 64-128, 96-192, 128-256, 160-320 channels, a 2x2 max-pool
(stride 2, Caffe's ceil mode) between blocks and a global average pool at the end. Each conv is followed by BN
(as in the PIFR re-implementations APRN follows, e.g. DR-GAN) and ReLU, except conv52, which is linear as in the
original. Output: the 320-D pooled feature - Dropout - FC(embedding_size) - BN with gamma fixed at 1.
Maps, default 96x96 input (APRN's random 96x96 crops of 100x100 faces): stem = conv11-conv12 96x96x64,
stage1 = pool1, conv21-22 48x48x128, stage2 24x24x192, stage3 12x12x256, stage4 = pool4, conv51-52 6x6x320.
"""
from typing import Optional, Sequence

import keras

from tfface.backbones.blocks import backbone_model, batch_norm, check_options, fc_embedding, image_input

BLOCK_WIDTHS = ((32, 64), (64, 128), (96, 192), (128, 256), (160, 320))


def _conv_bn(x, filters: int, name: str, sync_batchnorm: bool, relu: bool = True):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn", sync_batchnorm)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def casianet(
    input_shape: Sequence[int] = (96, 96, 3),
    embedding_size: int = 512,
    dropout: float = 0.0,
    sync_batchnorm: bool = False,
    name: Optional[str] = None,
) -> keras.Model:
    """Builds CASIA-Net; default input 96x96."""
    input_shape = check_options(input_shape, embedding_size, dropout)
    image = image_input(input_shape)
    stages = []
    x = image
    for block, (first, second) in enumerate(BLOCK_WIDTHS, start=1):
        if block > 1:
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{block - 1}")(x)
        x = _conv_bn(x, first, f"conv{block}1", sync_batchnorm)
        x = _conv_bn(x, second, f"conv{block}2", sync_batchnorm, relu=block < len(BLOCK_WIDTHS))
        stages.append(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool5")(stages[-1])
    embedding = fc_embedding(pooled, embedding_size, dropout, sync_batchnorm)
    return backbone_model(image, stages, embedding, name or "casianet")
