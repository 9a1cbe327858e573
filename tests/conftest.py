"""Test setup: two logical CPU devices so MirroredStrategy paths run with 2 replicas; shared fixtures."""
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN's CPU kernels, as trainers.train and the server run them (tfface.cli.prefer_onednn); the suite runs faster
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip when this checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Seeded Keras, a clean session after each test, and collective keys apart from earlier tests' strategies
    (every MirroredStrategy numbers its collectives from the same base, which TF lets tests move)."""
    import keras

    keras.utils.set_random_seed(0)
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    yield
    keras.backend.clear_session(free_memory=False)
