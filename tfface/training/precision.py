"""Mixed precision: the `train.precision` switch (Keras dtype policies) and the loss-scaling helpers of the trainer.

- "float32": layers compute and keep variables in float32.
- "mixed_float16" / "mixed_bfloat16": layers compute in float16 / bfloat16 and keep float32 variables. Margin heads
  always compute in float32 (tfface.heads.base), so the logits and the identity loss stay float32.
- float16's exponent range is narrow (smallest normal 6e-5), so small gradients underflow: under "mixed_float16"
  gradients are taken of the loss times a dynamic scale and divided by it before the update
  (`keras.optimizers.LossScaleOptimizer`: the scale halves and the step is skipped when a gradient is not finite,
  and doubles after `dynamic_growth_steps` finite steps). bfloat16 has float32's exponent range and needs no scale.
"""
import contextlib
from typing import Iterator, List, Optional, Sequence

import keras
import tensorflow as tf

from tfface.errors import ConfigError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a ConfigError (a ValueError) naming `train.precision`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: unknown precision '{precision}'; available: {', '.join(PRECISIONS)}")
    return precision


def needs_loss_scaling(precision: str) -> bool:
    """True where gradients must come from a scaled loss (float16 compute)."""
    return check_precision(precision) == "mixed_float16"


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Layers constructed inside use `precision` as their dtype policy; the previous global policy comes back after.

    A layer keeps the policy it was constructed with, so build the whole model inside the scope.
    """
    check_precision(precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, precision: str) -> keras.optimizers.Optimizer:
    """The optimizer wrapped in a dynamic LossScaleOptimizer under "mixed_float16"; unchanged otherwise."""
    if needs_loss_scaling(precision) and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def unwrapped(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that does the update: the inner one of a LossScaleOptimizer, else the optimizer itself."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def loss_scale(optimizer: Optional[keras.optimizers.Optimizer]) -> tf.Tensor:
    """The factor `optimizer.scale_loss` multiplies a loss by now (float32 scalar; 1 without loss scaling)."""
    if optimizer is None:
        return tf.constant(1.0, tf.float32)
    return tf.cast(optimizer.scale_loss(tf.constant(1.0, tf.float32)), tf.float32)


def rescale_gradients(
    gradients: Sequence[Optional[tf.Tensor]],
    scaled_by: keras.optimizers.Optimizer,
    for_optimizer: Optional[keras.optimizers.Optimizer],
) -> List[Optional[tf.Tensor]]:
    """Gradients of a loss scaled by `scaled_by`'s factor, re-expressed at `for_optimizer`'s factor.

    One backward pass serves several optimizers (the main one and each branch's own): each then divides by its own
    scale and checks finiteness itself. Non-finite gradients stay non-finite, so every optimizer skips the step.
    """
    factor = loss_scale(for_optimizer) / loss_scale(scaled_by)
    rescaled = []
    for gradient in gradients:
        if gradient is None:
            rescaled.append(None)
        elif isinstance(gradient, tf.IndexedSlices):
            values = gradient.values * tf.cast(factor, gradient.values.dtype)
            rescaled.append(tf.IndexedSlices(values, gradient.indices, gradient.dense_shape))
        else:
            rescaled.append(gradient * tf.cast(factor, gradient.dtype))
    return rescaled
