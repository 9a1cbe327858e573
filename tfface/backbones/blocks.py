"""Layers and checks shared by the backbones: batch norm, PReLU, the embedding output layer, option validation.

Batch norm follows insightface (PyTorch defaults): epsilon 1e-5 and momentum 0.9 for the moving statistics (PyTorch's
momentum 0.1). With `synchronized=True` the batch statistics are all-reduced across `tf.distribute` replicas.
"""
from typing import Dict, Sequence, Tuple

import keras

from tfface.backbones.fused_layers import BatchNormalization, PReLU

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
STAGE_KEYS = ("stem", "stage1", "stage2", "stage3", "stage4")


def batch_norm(name: str, sync_batchnorm: bool, scale: bool = True) -> keras.layers.BatchNormalization:
    """BatchNormalization over the last axis (fused in training, see fused_layers); `scale=False` fixes gamma at 1
    (no variable)."""
    return BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=scale, synchronized=sync_batchnorm, name=name
    )


def prelu(name: str) -> keras.layers.PReLU:
    """Per-channel PReLU on NHWC maps with PyTorch's initial slope 0.25 (XLA-fused in training, see fused_layers)."""
    return PReLU(
        alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name
    )


def torch_padding(x, kernel_size: int, strides: int, name: str):
    """PyTorch's symmetric zero padding (kernel_size // 2 each side) for a strided conv; returns (x, keras padding).

    Keras "same" pads a stride-2 conv on an even input only at the bottom/right; PyTorch (and Caffe) pad both sides,
    so the strided convs of the ported nets pad explicitly and run "valid". Stride 1 "same" is already symmetric.
    """
    if strides == 1 or kernel_size == 1:
        return x, "same" if strides == 1 else "valid"
    x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    return x, "valid"


def fc_embedding(features, embedding_size: int, dropout: float, sync_batchnorm: bool):
    """insightface's output: Flatten - Dropout - FC(embedding_size, bias) - BN with gamma fixed at 1.

    features: [N, h, w, c] (or [N, c]); returns [N, embedding_size]. The last BN plays insightface's `features`
    BatchNorm1d, whose weight is frozen at 1.0: here it has no gamma at all, which is the same function.
    """
    x = keras.layers.Flatten(name="embedding_flatten")(features)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    x = keras.layers.Dense(embedding_size, name="embedding_fc")(x)
    return batch_norm("embedding", sync_batchnorm, scale=False)(x)


def check_options(
    input_shape: Sequence[int], embedding_size: int, dropout: float, min_size: int = 16
) -> Tuple[int, int, int]:
    """Validates the options common to every backbone; returns input_shape as a tuple (H, W, 3)."""
    if len(tuple(input_shape)) != 3 or int(input_shape[2]) != 3:
        raise ValueError(f"input_shape must be (H, W, 3), got {tuple(input_shape)}")
    height, width = int(input_shape[0]), int(input_shape[1])
    if height < min_size or width < min_size:
        raise ValueError(f"input_shape must be at least {min_size}x{min_size} for this backbone, got {height}x{width}")
    if int(embedding_size) < 1:
        raise ValueError(f"embedding_size must be a positive integer, got {embedding_size}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return height, width, 3


def image_input(input_shape: Tuple[int, int, int]) -> keras.KerasTensor:
    """The single model input, named "image": float32 [N, H, W, 3], normalised as (pixel - 127.5) / 128."""
    return keras.Input(shape=input_shape, dtype="float32", name="image")


def backbone_model(image, stages: Sequence, embedding, name: str) -> keras.Model:
    """The functional model with the dict output {"stem", "stage1".."stage4", "embedding"}; stages in that order."""
    if len(stages) != len(STAGE_KEYS):
        raise ValueError(f"a backbone needs {len(STAGE_KEYS)} feature maps {STAGE_KEYS}, got {len(stages)}")
    outputs: Dict[str, keras.KerasTensor] = dict(zip(STAGE_KEYS, stages))
    outputs["embedding"] = embedding
    return keras.Model(inputs=image, outputs=outputs, name=name)
