"""Choosing the tf.distribute strategy of a run.

On logical CPU devices (tests, CPU-only machines split into devices) MirroredStrategy reduces through one device:
its default collective all-reduce keys restart at the same numbers for every strategy object, so a second strategy
in the same process collides with the first ("Shape mismatch in the collective instance 100"). GPUs keep the
default (NCCL) reduction.
"""
from typing import Optional, Sequence

import tensorflow as tf

from tfface.errors import ConfigError

STRATEGIES = ("auto", "mirrored", "default")


def mirrored_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over `devices` (default: every GPU, else every logical CPU device)."""
    gpus = tf.config.list_logical_devices("GPU")
    if devices is None:
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
    on_cpus = all("CPU" in device.upper() for device in devices)
    cross_device_ops = tf.distribute.ReductionToOneDevice() if on_cpus else None
    return tf.distribute.MirroredStrategy(list(devices), cross_device_ops=cross_device_ops)


def select_strategy(kind: str) -> tf.distribute.Strategy:
    """'auto': mirrored when more than one GPU (or, without GPUs, logical CPU device) is visible, else the default
    strategy; 'mirrored' and 'default' force one."""
    if kind not in STRATEGIES:
        raise ConfigError(f"train.strategy: unknown strategy '{kind}'; available: {', '.join(STRATEGIES)}")
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if kind == "mirrored" or (kind == "auto" and (len(gpus) > 1 or (not gpus and len(cpus) > 1))):
        return mirrored_strategy()
    return tf.distribute.get_strategy()
