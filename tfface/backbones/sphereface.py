"""SphereFace-20/36/64: the residual nets of SphereFace (Liu et al. 2017, wy1iu/sphereface `make_spherenet.py`).

Each of the 4 stages: conv3x3(stride 2, bias, Xavier init) - PReLU, then `units` residual units
x + PReLU(conv3x3(PReLU(conv3x3(x)))) (no bias, Gaussian init std 0.01); widths 64, 128, 256, 512; units
[1, 2, 4, 1] (20 layers), [2, 4, 8, 2] (36), [3, 8, 16, 3] (64). Output: Dropout - FC(embedding_size, bias) (fc5).
The original has no batch norm (so `sync_batchnorm` changes nothing here) and no input-resolution layer: the "stem"
map is an added conv3x3(64, stride 1) - PReLU in front of stage 1. For the default 112x96 input: stem 112x96x64,
stage1 56x48x64, stage2 28x24x128, stage3 14x12x256, stage4 7x6x512.
"""
from typing import Callable, Optional, Sequence

import keras

from tfface.backbones.blocks import backbone_model, check_options, image_input, prelu, torch_padding

STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64
UNITS_PER_STAGE = {
    "sphereface20": (1, 2, 4, 1),
    "sphereface36": (2, 4, 8, 2),
    "sphereface64": (3, 8, 16, 3),
}


def _residual_unit(x, name: str):
    """x + PReLU(conv(PReLU(conv(x)))): [N, h, w, c] -> same shape."""
    y = x
    for index in (1, 2):
        y = keras.layers.Conv2D(
            x.shape[-1],
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name=f"{name}_conv{index}",
        )(y)
        y = prelu(f"{name}_prelu{index}")(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def _downsample(x, filters: int, name: str):
    """conv3x3(stride 2, bias) - PReLU with Caffe's symmetric padding: [N, h, w, c] -> [N, ceil(h/2), ceil(w/2), f]."""
    x, padding = torch_padding(x, 3, 2, name)
    x = keras.layers.Conv2D(filters, 3, strides=2, padding=padding, name=f"{name}_conv")(x)
    return prelu(f"{name}_prelu")(x)


def build_sphereface(
    units_per_stage: Sequence[int],
    input_shape: Sequence[int],
    embedding_size: int,
    dropout: float,
    name: str,
) -> keras.Model:
    """A SphereFace residual net with `units_per_stage[k]` residual units in stage k + 1."""
    input_shape = check_options(input_shape, embedding_size, dropout)
    image = image_input(input_shape)
    stem = keras.layers.Conv2D(STEM_WIDTH, 3, padding="same", name="stem_conv")(image)
    stages = [prelu("stem_prelu")(stem)]
    for stage, (filters, units) in enumerate(zip(STAGE_WIDTHS, units_per_stage), start=1):
        x = _downsample(stages[-1], filters, f"stage{stage}_downsample")
        for unit in range(units):
            x = _residual_unit(x, f"stage{stage}_unit{unit + 1}")
        stages.append(x)
    x = keras.layers.Flatten(name="embedding_flatten")(stages[-1])
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    embedding = keras.layers.Dense(embedding_size, name="embedding")(x)
    return backbone_model(image, stages, embedding, name)


def _builder(arch: str) -> Callable[..., keras.Model]:
    def builder(
        input_shape: Sequence[int] = (112, 96, 3),
        embedding_size: int = 512,
        dropout: float = 0.0,
        sync_batchnorm: bool = False,
        name: Optional[str] = None,
    ) -> keras.Model:
        del sync_batchnorm  # SphereFace nets have no batch norm; accepted for the common builder interface
        return build_sphereface(UNITS_PER_STAGE[arch], input_shape, embedding_size, dropout, name or arch)

    builder.__name__ = arch
    builder.__doc__ = f"Builds {arch}: residual units per stage {UNITS_PER_STAGE[arch]}, default input 112x96."
    return builder


BUILDERS = {arch: _builder(arch) for arch in UNITS_PER_STAGE}  # registered by name in tfface.backbones
