"""3D-BERL's identity-relevant auxiliary (IRA) networks: Phi_d and Phi_a, backbone features -> canonical maps.

Encoder (the paper's 7 layers): Conv-GroupNorm-LeakyReLU and Conv-LeakyReLU, both 4x4 stride 2, then a Conv-ReLU
whose kernel covers what is left, giving a 1x1 code. At 112x112 input the stage-3 features are 14x14 -> 7 -> 4 -> 1.
Decoder (Unsup3D's EDDeconv decoder): a 4x4 transposed conv to 4x4, then per doubling a stride-2 transposed conv and
a 3x3 conv (GroupNorm, ReLU) with halving channels, a nearest-neighbour x2 upsampling, two convs (3x3, 5x5) and a 5x5
output conv: 4 -> 8 -> 16 -> 32 -> 64 at the paper's map size 64.
"""
import math
from typing import Optional, Sequence

import keras

# Unsup3D's GroupNorm has 4 channels per group (GroupNorm(16, 64) etc.).
CHANNELS_PER_GROUP = 4


def _group_norm(channels: int, name: str) -> keras.layers.GroupNormalization:
    groups = math.gcd(channels, max(1, channels // CHANNELS_PER_GROUP))
    return keras.layers.GroupNormalization(groups=groups, name=name)


def _conv_block(filters: int, kernel, strides: int, padding: str, name: str, norm: bool, activation):
    """[Conv2D (no bias), optional GroupNorm, activation layer]."""
    conv = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv")
    block = [conv]
    if norm:
        block.append(_group_norm(filters, f"{name}_gn"))
    block.append(activation(name=f"{name}_act"))
    return block


def _leaky_relu(name):
    return keras.layers.LeakyReLU(negative_slope=0.2, name=name)


def _relu(name):
    return keras.layers.ReLU(name=name)


def canonical_map_net(
    feature_shape: Sequence[int],
    out_channels: int,
    map_size: int = 64,
    width: int = 64,
    code_size: int = 256,
    output_activation: Optional[str] = None,
    output_initializer="glorot_uniform",
    name: str = "canonical_map_net",
) -> keras.Sequential:
    """A keras.Sequential: features [N, h, w, c] -> canonical map [N, map_size, map_size, out_channels].

    feature_shape: (h, w, c) of the backbone features read (stage 3); map_size: a power of two >= 8; width: Unsup3D's
    nf (channels at full resolution; the decoder starts at width * map_size / 8); code_size: channels of the 1x1 code;
    output_activation: of the last conv (None for depth, "tanh" for albedo); output_initializer: of its kernel
    ("zeros" starts every map flat).
    """
    if len(feature_shape) != 3 or min(feature_shape) < 1:
        raise ValueError(f"feature_shape must be (h, w, c), got {tuple(feature_shape)}")
    if map_size < 8 or 2 ** int(round(math.log2(map_size))) != map_size:
        raise ValueError(f"map_size must be a power of two >= 8, got {map_size}")
    if width < 1 or code_size < 1 or out_channels < 1:
        raise ValueError(f"width, code_size and out_channels must be >= 1, got {width}, {code_size}, {out_channels}")
    height, breadth = feature_shape[0], feature_shape[1]
    left = (math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(breadth / 2) / 2))
    layers = [keras.Input(tuple(feature_shape))]
    layers += _conv_block(width * 4, 4, 2, "same", f"{name}_enc1", True, _leaky_relu)
    layers += _conv_block(width * 8, 4, 2, "same", f"{name}_enc2", False, _leaky_relu)
    layers += _conv_block(code_size, left, 1, "valid", f"{name}_enc3", False, _relu)

    doublings = int(round(math.log2(map_size))) - 3
    channels = width * 2**doublings
    layers += [
        keras.layers.Conv2DTranspose(channels, 4, padding="valid", use_bias=False, name=f"{name}_dec0_deconv"),
        keras.layers.ReLU(name=f"{name}_dec0_deconv_act"),
    ]
    layers += _conv_block(channels, 3, 1, "same", f"{name}_dec0", False, _relu)
    for index in range(1, doublings + 1):
        channels //= 2
        layers += [
            keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=False,
                                         name=f"{name}_dec{index}_deconv"),
            _group_norm(channels, f"{name}_dec{index}_deconv_gn"),
            keras.layers.ReLU(name=f"{name}_dec{index}_deconv_act"),
        ]
        layers += _conv_block(channels, 3, 1, "same", f"{name}_dec{index}", True, _relu)
    layers.append(keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample"))
    layers += _conv_block(width, 3, 1, "same", f"{name}_out1", True, _relu)
    layers += _conv_block(width, 5, 1, "same", f"{name}_out2", True, _relu)
    layers.append(keras.layers.Conv2D(out_channels, 5, padding="same", use_bias=False, activation=output_activation,
                                      kernel_initializer=output_initializer, name=f"{name}_out"))
    return keras.Sequential(layers, name=name)
