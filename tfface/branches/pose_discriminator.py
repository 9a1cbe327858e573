"""APRN's pose discriminator D (paper 000, Table 1 and Table 4): a landmark regressor on a hidden feature map.

Table 1 (ResNet-101/152 on 224x224 faces): [Conv3x3 stride 2 - BN - ReLU] with the widths of the input stage (towards
2048 channels, more blocks on shallower stages) - MaxPool 3x3 stride 2 - FC(2M).
Table 4 (CASIA-Net, on its last conv layer): three [Conv3x3x320 stride 1 - BN - ReLU] - FC(M x 2), no pooling.
The FC output is read as M (x, y) landmarks [N, M, 2] in the units of its targets (tfface: (x / w, y / h) of the
network input image). Padding is "same", so any map of at least 1x1 works.
"""
from typing import Dict, Optional, Sequence

import keras
import numpy as np

from tfface.backbones.blocks import BN_EPSILON, BN_MOMENTUM, STAGE_KEYS

# Table 1: the conv widths of D for each input stage (ResNet-101/152).
STAGE_CHANNELS = {
    "stem": (256, 512, 1024, 2048),
    "stage1": (512, 1024, 2048),
    "stage2": (1024, 2048),
    "stage3": (2048,),
    "stage4": (2048,),
}
# Table 4: D of CASIA-Net.
CASIA_CHANNELS = (320, 320, 320)
TABLES = (1, 4)


def default_channels(stage: str, width_multiplier: float = 1.0, table: int = 1) -> tuple:
    """The widths of `table` (Table 1's for `stage`, or Table 4's) times `width_multiplier` (at least 1 each)."""
    if stage not in STAGE_CHANNELS:
        raise ValueError(f"stage: unknown stage '{stage}'; available: {', '.join(STAGE_KEYS)}")
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    widths = STAGE_CHANNELS[stage] if table == 1 else CASIA_CHANNELS
    return tuple(max(1, int(round(width * width_multiplier))) for width in widths)


def table_design(table: int) -> Dict[str, object]:
    """{"strides", "pool"} of the table: 1 (ResNet: stride 2, max-pool) or 4 (CASIA-Net: stride 1, no pool)."""
    if table not in TABLES:
        raise ValueError(f"table must be 1 (ResNet, Table 1) or 4 (CASIA-Net, Table 4), got {table!r}")
    return {"strides": 2, "pool": True} if table == 1 else {"strides": 1, "pool": False}


class PoseDiscriminator(keras.Model):
    """Feature map [N, h, w, c] -> landmarks [N, M, 2] float32.

    channels: widths of the Conv3x3-BN-ReLU blocks; strides: their stride (Table 1: 2, Table 4: 1);
    pool: the 3x3 stride-2 max-pool before the FC (Table 1: yes, Table 4: no);
    sync_batchnorm: all-reduce the batch statistics across tf.distribute replicas;
    initial_landmarks: [M, 2] the FC bias starts at (so D starts as that constant prediction), default zeros.
    """

    def __init__(
        self,
        num_landmarks: int,
        channels: Sequence[int],
        strides: int = 2,
        pool: bool = True,
        sync_batchnorm: bool = False,
        initial_landmarks=None,
        name: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if int(num_landmarks) < 1:
            raise ValueError(f"num_landmarks must be a positive integer, got {num_landmarks}")
        channels = tuple(channels)
        if not channels or any(int(width) < 1 for width in channels):
            raise ValueError(f"channels must be a non-empty list of positive integers, got {list(channels)}")
        if int(strides) not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides}")
        self.num_landmarks = int(num_landmarks)
        self.blocks = []
        for index, width in enumerate(channels):
            self.blocks += [
                keras.layers.Conv2D(
                    int(width), 3, strides=int(strides), padding="same", use_bias=False, name=f"block{index}_conv"
                ),
                keras.layers.BatchNormalization(
                    momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=sync_batchnorm, name=f"block{index}_bn"
                ),
                keras.layers.ReLU(name=f"block{index}_relu"),
            ]
        self.pool = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool") if pool else None
        self.flatten = keras.layers.Flatten(name="flatten")
        bias = "zeros"
        if initial_landmarks is not None:
            initial = np.asarray(initial_landmarks, np.float32)
            if initial.shape != (self.num_landmarks, 2):
                raise ValueError(f"initial_landmarks must be [{self.num_landmarks}, 2], got {list(initial.shape)}")
            bias = keras.initializers.Constant(initial.reshape(-1))
        self.fc = keras.layers.Dense(2 * self.num_landmarks, bias_initializer=bias, name="fc")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.blocks:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if self.pool is not None:
            shape = self.pool.compute_output_shape(shape)
        self.fc.build((shape[0], shape[1] * shape[2] * shape[3]))
        self.built = True

    def call(self, features, training=False):
        x = features
        for layer in self.blocks:
            x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
        if self.pool is not None:
            x = self.pool(x)
        x = self.fc(self.flatten(x))
        return keras.ops.reshape(keras.ops.cast(x, "float32"), (-1, self.num_landmarks, 2))
