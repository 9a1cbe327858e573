"""IResNet-18/34/50/100: insightface's arcface_torch IResNet, layer for layer.

stem: conv3x3(64, stride 1) - BN - PReLU. Four stages of IBasicBlocks with widths 64, 128, 256, 512, the first block
of each with stride 2 and a conv1x1(stride 2) - BN shortcut. IBasicBlock: BN - conv3x3 - BN - PReLU -
conv3x3(stride) - BN, plus the shortcut. Output: BN - Flatten - Dropout - FC(embedding_size) - BN with gamma fixed
at 1 (insightface's `features` BatchNorm1d, weight frozen at 1.0). Convs have no bias. For 112x112 input:
stem 112x112x64, stage1 56x56x64, stage2 28x28x128, stage3 14x14x256, stage4 7x7x512.
"""
from typing import Callable, Optional, Sequence

import keras

from tfface.backbones.blocks import (
    backbone_model,
    batch_norm,
    check_options,
    fc_embedding,
    image_input,
    prelu,
    torch_padding,
)

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def _conv(x, filters: int, kernel_size: int, strides: int, name: str):
    x, padding = torch_padding(x, kernel_size, strides, name)
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name
    )(x)


def _basic_block(x, filters: int, strides: int, name: str, sync_batchnorm: bool):
    """IBasicBlock: [N, h, w, c] -> [N, ceil(h / strides), ceil(w / strides), filters]."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, strides, f"{name}_downsample_conv")
        shortcut = batch_norm(f"{name}_downsample_bn", sync_batchnorm)(shortcut)
    y = batch_norm(f"{name}_bn1", sync_batchnorm)(x)
    y = _conv(y, filters, 3, 1, f"{name}_conv1")
    y = batch_norm(f"{name}_bn2", sync_batchnorm)(y)
    y = prelu(f"{name}_prelu")(y)
    y = _conv(y, filters, 3, strides, f"{name}_conv2")
    y = batch_norm(f"{name}_bn3", sync_batchnorm)(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def build_iresnet(
    blocks_per_stage: Sequence[int],
    input_shape: Sequence[int],
    embedding_size: int,
    dropout: float,
    sync_batchnorm: bool,
    name: str,
) -> keras.Model:
    """An IResNet with `blocks_per_stage[k]` IBasicBlocks in stage k + 1."""
    input_shape = check_options(input_shape, embedding_size, dropout)
    image = image_input(input_shape)
    x = _conv(image, 64, 3, 1, "stem_conv")
    x = batch_norm("stem_bn", sync_batchnorm)(x)
    stages = [prelu("stem_prelu")(x)]
    for stage, (filters, blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage), start=1):
        x = stages[-1]
        for block in range(blocks):
            x = _basic_block(x, filters, 2 if block == 0 else 1, f"stage{stage}_block{block + 1}", sync_batchnorm)
        stages.append(x)
    x = batch_norm("output_bn", sync_batchnorm)(stages[-1])
    embedding = fc_embedding(x, embedding_size, dropout, sync_batchnorm)
    return backbone_model(image, stages, embedding, name)


def _builder(arch: str) -> Callable[..., keras.Model]:
    def builder(
        input_shape: Sequence[int] = (112, 112, 3),
        embedding_size: int = 512,
        dropout: float = 0.0,
        sync_batchnorm: bool = False,
        name: Optional[str] = None,
    ) -> keras.Model:
        return build_iresnet(
            BLOCKS_PER_STAGE[arch], input_shape, embedding_size, dropout, sync_batchnorm, name or arch
        )

    builder.__name__ = arch
    builder.__doc__ = f"Builds {arch}: IBasicBlocks per stage {BLOCKS_PER_STAGE[arch]}, default input 112x112."
    return builder


BUILDERS = {arch: _builder(arch) for arch in BLOCKS_PER_STAGE}  # registered by name in tfface.backbones
