"""Per-example gates (LATSE's frozen-teacher top-k gate) registered by name, and the gradient routing of a gate
whose scope is the backbone."""
from typing import Dict

import tensorflow as tf

from tfface.registry import Registry

GATES = Registry("gate")


def gate_backbone_gradient(features: Dict[str, tf.Tensor], weights: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The same feature values, whose gradient back into the backbone is multiplied by each example's weight.

    features: {name: [N, ...]} backbone outputs; weights: float32 [N]. Each feature becomes
    stop_gradient(f) + w * (f - stop_gradient(f)): its value is f bit for bit (the second term is w * 0), and
    d/df = w, so a loss downstream still sees (and trains its own variables on) every example, while example i
    sends w_i times its gradient into the backbone (exactly 0 for w_i = 0).
    """
    gated = {}
    for name, value in features.items():
        stopped = tf.stop_gradient(value)
        per_example = tf.reshape(tf.cast(weights, value.dtype), [-1] + [1] * (value.shape.rank - 1))
        gated[name] = stopped + per_example * (value - stopped)
    return gated


# Imported for their registration side effects.
from tfface.training import teacher_gate  # noqa: E402,F401
