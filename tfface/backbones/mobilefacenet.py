"""MobileFaceNet (Chen et al. 2018) as in insightface's arcface_torch `mobilefacenet.py`.

ConvBlock = conv (no bias) - BN - PReLU; LinearBlock = conv (no bias) - BN; a bottleneck ("DepthWise") =
ConvBlock 1x1 to the expanded width - depthwise ConvBlock 3x3 (stride) - LinearBlock 1x1, with an identity shortcut
in the stride-1 ("Residual") ones. Layout with scale=1 (the paper's, Table 1; insightface's "mbf" uses scale=2):
  stem    ConvBlock 3x3 stride 2, 64                                     56x56x64
  stage1  depthwise ConvBlock 3x3, 64 (grouped, 64 groups, when scale>1)  56x56x64
  stage2  bottleneck stride 2 (expanded to 128) + 4 residual ones (128)   28x28x64
  stage3  bottleneck stride 2 to 128 (expanded to 256) + 6 residual (256) 14x14x128
  stage4  bottleneck stride 2 (expanded to 512) + 2 residual (256) + ConvBlock 1x1 to 512   7x7x512
  output  linear GDConv (depthwise kernel = the stage4 size, 7x7 at 112) - BN - Dropout - FC(no bias) - BN
Sizes are for the default 112x112 input; stage3 and stage4 have IResNet's 14x14 and 7x7. Channels of the maps scale
with `scale` (stem..stage3; stage4 is always 512), the expanded widths do not (as in insightface).
"""
from typing import Optional, Sequence

import keras

from tfface.backbones.blocks import backbone_model, batch_norm, check_options, image_input, prelu, torch_padding
from tfface.backbones.conv import Conv2D


def _conv_block(x, filters: int, kernel_size: int, strides: int, name: str, sync_batchnorm: bool,
                groups: int = 1, activation: bool = True):
    """conv (PyTorch padding kernel_size // 2, no bias) - BN [- PReLU]; groups == filters == input width: depthwise."""
    x, padding = torch_padding(x, kernel_size, strides, name)
    if groups > 1 and groups == filters == x.shape[-1]:
        conv = keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv"
        )
    else:  # keras Conv2D's variables; grouped and pointwise convs computed fast (see backbones.conv)
        conv = Conv2D(
            filters, kernel_size, strides=strides, padding=padding, groups=groups, use_bias=False, name=f"{name}_conv"
        )
    x = batch_norm(f"{name}_bn", sync_batchnorm)(conv(x))
    return prelu(f"{name}_prelu")(x) if activation else x


def _bottleneck(x, filters: int, expanded: int, strides: int, name: str, sync_batchnorm: bool):
    """insightface's DepthWise: [N, h, w, c] -> [N, ceil(h / strides), ceil(w / strides), filters]."""
    y = _conv_block(x, expanded, 1, 1, f"{name}_expand", sync_batchnorm)
    y = _conv_block(y, expanded, 3, strides, f"{name}_depthwise", sync_batchnorm, groups=expanded)
    y = _conv_block(y, filters, 1, 1, f"{name}_project", sync_batchnorm, activation=False)
    if strides == 1 and x.shape[-1] == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def _bottleneck_stage(x, filters: int, expanded_down: int, expanded: int, residuals: int, name: str,
                      sync_batchnorm: bool):
    x = _bottleneck(x, filters, expanded_down, 2, f"{name}_down", sync_batchnorm)
    for index in range(residuals):
        x = _bottleneck(x, filters, expanded, 1, f"{name}_residual{index + 1}", sync_batchnorm)
    return x


def mobilefacenet(
    input_shape: Sequence[int] = (112, 112, 3),
    embedding_size: int = 512,
    dropout: float = 0.0,
    sync_batchnorm: bool = False,
    scale: int = 1,
    name: Optional[str] = None,
) -> keras.Model:
    """Builds MobileFaceNet; `scale` multiplies the stem..stage3 widths (1: the paper, 2: insightface's "mbf")."""
    input_shape = check_options(input_shape, embedding_size, dropout)
    if int(scale) < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    image = image_input(input_shape)
    stem = _conv_block(image, 64 * scale, 3, 2, "stem", sync_batchnorm)
    stage1 = _conv_block(stem, 64 * scale, 3, 1, "stage1", sync_batchnorm, groups=64)
    stage2 = _bottleneck_stage(stage1, 64 * scale, 128, 128, 4, "stage2", sync_batchnorm)
    stage3 = _bottleneck_stage(stage2, 128 * scale, 256, 256, 6, "stage3", sync_batchnorm)
    x = _bottleneck_stage(stage3, 128 * scale, 512, 256, 2, "stage4", sync_batchnorm)
    stage4 = _conv_block(x, 512, 1, 1, "stage4_separable", sync_batchnorm)
    x = keras.layers.DepthwiseConv2D(tuple(stage4.shape[1:3]), use_bias=False, name="gdconv")(stage4)
    x = batch_norm("gdconv_bn", sync_batchnorm)(x)
    x = keras.layers.Flatten(name="embedding_flatten")(x)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    x = keras.layers.Dense(embedding_size, use_bias=False, name="embedding_fc")(x)
    embedding = batch_norm("embedding", sync_batchnorm)(x)
    return backbone_model(image, [stem, stage1, stage2, stage3, stage4], embedding, name or "mobilefacenet")
