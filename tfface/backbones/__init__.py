"""Backbones: functional Keras models mapping a normalised face image to feature maps and an embedding.

Every backbone is a `keras.Model` with one input named "image", shape (H, W, 3), float32, already normalised as
(pixel - 127.5) / 128, and a dict output with exactly the keys "stem", "stage1" .. "stage4" (NHWC feature maps) and
"embedding" ([N, embedding_size], not L2-normalised). Importing this package registers every backbone.

    >>> model = get_backbone("iresnet50", embedding_size=512)
    >>> outputs = model(images)            # outputs["stage3"]: [N, 14, 14, 256] at 112x112
"""
from typing import List

import keras

from tfface.backbones import iresnet, sphereface
from tfface.backbones.casianet import casianet
from tfface.backbones.lenetpp import lenetpp
from tfface.backbones.mobilefacenet import mobilefacenet
from tfface.backbones.tiny import tiny
from tfface.registry import Registry

BACKBONES = Registry("backbone")
for _name, _builder in {"casianet": casianet, "lenetpp": lenetpp, "mobilefacenet": mobilefacenet, "tiny": tiny,
                        **iresnet.BUILDERS, **sphereface.BUILDERS}.items():
    BACKBONES.register(_name)(_builder)


def available() -> List[str]:
    """Names of the registered backbones, sorted."""
    return BACKBONES.available()


def get_backbone(name: str, /, **options) -> keras.Model:
    """Builds backbone `name` with `options`; `name=` among the options is the model's name.

    Unknown names and unknown options raise ValueError (tfface.errors.ConfigError) naming them.
    """
    return BACKBONES.build(name, **options)

