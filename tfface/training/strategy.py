"""Choosing the tf.distribute strategy of a run.

On logical CPU devices (tests, CPU-only machines split into devices) MirroredStrategy reduces through one device:
its default collective all-reduce keys restart at the same numbers for every strategy object, so a second strategy
in the same process collides with the first ("Shape mismatch in the collective instance 100"). GPUs keep the
default (NCCL) reduction.

Several hosts: MultiWorkerMirroredStrategy over the cluster that the TF_CONFIG environment variable describes
({"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}, one process per host); create
it before any other TensorFlow operation runs.
"""
import json
import os
from typing import Optional, Sequence

import tensorflow as tf

from tfface.errors import ConfigError

STRATEGIES = ("auto", "mirrored", "multi_worker", "default")


def mirrored_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over `devices` (default: every GPU, else every logical CPU device)."""
    gpus = tf.config.list_logical_devices("GPU")
    if devices is None:
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
    on_cpus = all("CPU" in device.upper() for device in devices)
    cross_device_ops = tf.distribute.ReductionToOneDevice() if on_cpus else None
    return tf.distribute.MirroredStrategy(list(devices), cross_device_ops=cross_device_ops)


def tf_config_workers() -> int:
    """Number of worker (and chief) tasks in the TF_CONFIG cluster; 0 without TF_CONFIG."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as error:
        raise ConfigError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task': {error}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def select_strategy(kind: str) -> tf.distribute.Strategy:
    """'auto': multi_worker when TF_CONFIG names more than one worker, else mirrored when more than one GPU (or,
    without GPUs, logical CPU device) is visible, else the default strategy; the other kinds force one."""
    if kind not in STRATEGIES:
        raise ConfigError(f"train.strategy: unknown strategy '{kind}'; available: {', '.join(STRATEGIES)}")
    if kind == "multi_worker" or (kind == "auto" and tf_config_workers() > 1):
        if tf_config_workers() == 0:
            raise ConfigError("train.strategy: multi_worker needs the TF_CONFIG environment variable (cluster, task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if kind == "mirrored" or (kind == "auto" and (len(gpus) > 1 or (not gpus and len(cpus) > 1))):
        return mirrored_strategy()
    return tf.distribute.get_strategy()
