"""Batch norm and PReLU trained through fused computations: the same layers, variables and results as Keras's.

A profile of a MobileFaceNet training step on CPU (benchmarks/profile_step.py) spent 28% of the op time in Keras 3's
batch norm, which trains through ~10 separate ops (moments, then scale and shift) and their gradients. Here, in
training, channels-last inputs of rank 4 (or rank 2, seen as [N, 1, 1, C]) go through FusedBatchNormV3 (one op
forward, one for the gradient; oneDNN on CPU, cuDNN on GPU): forward + gradient on [16, 56, 56, 128] took 14 ms of
CPU instead of 33. The moving statistics get Keras's update with the biased batch variance; inference, masks,
`synchronized=True` and other layouts run Keras's own code.

PReLU: Keras computes relu(x) - alpha relu(-x) as six ops, whose gradients add about ten more full passes over the
map; on CPU these memory-bound passes were a quarter of a MobileFaceNet step's op time. In training, the forward
(where(x > 0, x, alpha x)) and the gradient (dx and dalpha together) each run as one XLA-compiled kernel: forward +
gradient on [32, 56, 56, 128] took 4 ms of wall time instead of 19 (2 CPU cores). Inference runs Keras's ops, so
exported SavedModels, TFLite and ONNX files hold no XLA calls.

Both classes keep Keras's class names: Keras weights files (`.weights.h5`) address a layer by its class name in snake
case and its rank among the layers of that class, so checkpoints load across the two implementations.
"""
from typing import Sequence

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="tfface")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step over the last axis runs as one fused op."""

    def _fusable(self, inputs, training, mask) -> bool:
        rank = len(inputs.shape)
        return (bool(training) and self.trainable and mask is None and not self.synchronized
                and not getattr(self, "renorm", False) and rank in (2, 4) and self.axis in (-1, rank - 1))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = ops.reshape(inputs, (-1, 1, 1, channels)) if len(inputs.shape) == 2 else inputs
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = ops.cast(x, "float32")
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        y, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.zeros((0,), tf.float32), variance=tf.zeros((0,), tf.float32),
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
        )
        # the op's batch variance is Bessel-corrected (n / (n - 1)); Keras tracks the biased one
        count = ops.cast(ops.size(x) // channels, "float32")
        variance = unbiased_variance * (count - 1.0) / ops.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        y = ops.reshape(y, ops.shape(inputs)) if len(inputs.shape) == 2 else y
        return ops.cast(y, self.compute_dtype)


def _reduced_axes(alpha_shape: Sequence[int]) -> list:
    """The input axes alpha (shape = the input's without the batch axis, shared axes 1) is broadcast along: the
    batch axis and every axis where alpha has size 1."""
    return [0] + [axis + 1 for axis, size in enumerate(alpha_shape) if size == 1]


@tf.function(jit_compile=True)
def _prelu_forward(x, alpha):
    """x: [N, ...], alpha broadcastable to x[0]: x where x > 0, alpha x elsewhere (one XLA kernel)."""
    return tf.where(x > 0, x, alpha * x)


@tf.function(jit_compile=True)
def _prelu_gradient(x, alpha, upstream):
    """(d loss / d x, d loss / d alpha) of _prelu_forward from d loss / d y = upstream (one XLA kernel)."""
    positive = x > 0
    d_x = tf.where(positive, upstream, alpha * upstream)
    d_alpha = tf.reduce_sum(tf.where(positive, tf.zeros_like(x), upstream * x),
                            axis=_reduced_axes(alpha.shape), keepdims=True)
    return d_x, tf.reshape(d_alpha, tf.shape(alpha))


@tf.custom_gradient
def _fused_prelu(x, alpha):
    def gradient(upstream):
        return _prelu_gradient(x, alpha, upstream)

    return _prelu_forward(x, alpha), gradient


@keras.saving.register_keras_serializable(package="tfface")
class PReLU(keras.layers.PReLU):
    """`keras.layers.PReLU` whose training forward and gradient each run as one XLA kernel (Keras's ops otherwise)."""

    def call(self, inputs, training=None):
        if not training:
            return super().call(inputs)
        return _fused_prelu(inputs, ops.cast(self.alpha, inputs.dtype))
