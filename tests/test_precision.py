"""Mixed precision: the precision switch, loss scaling (why and how), and FaceTrainer steps under each policy."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface import backbones
from tfface.errors import ConfigError
from tfface.heads import PartialFCHead, get_head
from tfface.training import Branch, FaceTrainer
from tfface.builder import build_trainer
from tfface.training.config import load_config
from tfface.training.precision import (
    check_precision,
    loss_scale,
    precision_scope,
    rescale_gradients,
    unwrapped,
    wrap_optimizer,
)

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 4


def make_batch(size=8):
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(size=(size, *INPUT_SHAPE)).astype("float32"),
        "label": (np.arange(size) % NUM_CLASSES).astype("int32"),
    }


def test_precision_names_are_checked_and_the_scope_restores_the_policy():
    with pytest.raises(ConfigError, match="train.precision: unknown precision 'half'; available: float32, "):
        check_precision("half")
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision_scope("mixed_bfloat16"):
        layer = keras.layers.Dense(2)
    assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError), precision_scope("mixed_float16"):
        raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_only_float16_wraps_the_optimizer_in_a_loss_scale_optimizer():
    sgd = keras.optimizers.SGD(0.1)
    assert wrap_optimizer(sgd, "float32") is sgd and wrap_optimizer(sgd, "mixed_bfloat16") is sgd
    scaled = wrap_optimizer(sgd, "mixed_float16")
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer) and unwrapped(scaled) is sgd
    assert wrap_optimizer(scaled, "mixed_float16") is scaled
    assert float(loss_scale(scaled)) == 2.0**15 and float(loss_scale(sgd)) == 1.0 and float(loss_scale(None)) == 1.0


def test_rescaled_gradients_move_from_one_loss_scale_to_another():
    main = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=8.0)
    branch = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=2.0)
    dense = tf.constant([[8.0, -16.0]])
    sparse = tf.IndexedSlices(tf.constant([[4.0]]), tf.constant([3]), tf.constant([5, 1]))
    rescaled = rescale_gradients([dense, sparse, None], main, branch)
    np.testing.assert_allclose(rescaled[0], [[2.0, -4.0]])
    np.testing.assert_allclose(rescaled[1].values, [[1.0]])
    np.testing.assert_array_equal(rescaled[1].indices, [3])
    assert rescaled[2] is None
    np.testing.assert_allclose(rescale_gradients([dense], main, None)[0], [[1.0, -2.0]])


def test_loss_scaling_keeps_a_float16_gradient_that_would_underflow():
    """d loss / d kernel = 1e-5 * 1e-3 = 1e-8 is below float16's smallest subnormal (6e-8): it becomes 0 when taken
    in float16, and survives when the loss is scaled by 2^15 first and the gradient divided afterwards."""
    with precision_scope("mixed_float16"):
        layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
        layer.build((None, 4))
    inputs = tf.fill((1, 4), 1e-3)
    optimizer = wrap_optimizer(keras.optimizers.SGD(0.1), "mixed_float16")

    def kernel_gradient(scale_the_loss):
        with tf.GradientTape() as tape:
            loss = 1e-5 * tf.reduce_sum(tf.cast(layer(inputs), tf.float32))
            if scale_the_loss:
                loss = optimizer.scale_loss(loss)
        return tape.gradient(loss, layer.kernel.value) / loss_scale(optimizer if scale_the_loss else None)

    np.testing.assert_array_equal(kernel_gradient(False), 0.0)
    np.testing.assert_allclose(kernel_gradient(True), np.full((4, 1), 1e-8), rtol=1e-2)


def config_for(precision, head="arcface"):
    return load_config(
        None,
        [
            "backbone.name=tiny",
            "backbone.options={embedding_size: 6}",
            f"head.name={head}",
            "head.options={}" if head != "partial_fc" else "head.options={sample_rate: 1.0}",
            f"train.precision={precision}",
            "schedule.name=constant",
            "schedule.learning_rate=0.05",
        ],
    )


def test_build_trainer_applies_the_precision_and_keeps_heads_float32():
    for precision, compute in (("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")):
        trainer = build_trainer(config_for(precision), NUM_CLASSES, steps_per_epoch=1, input_shape=INPUT_SHAPE)
        assert keras.mixed_precision.global_policy().name == "float32"
        features = trainer.backbone(make_batch()["image"], training=False)
        assert features["embedding"].dtype == compute
        outputs = trainer.head(features["embedding"], make_batch()["label"])
        assert trainer.head.kernel.dtype == "float32" and outputs["logits"].dtype == tf.float32
        loss_scaled = isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
        assert loss_scaled == (precision == "mixed_float16"), precision
    allowed = r"\(expected one of float32, mixed_float16, mixed_bfloat16\)"
    with pytest.raises(ConfigError, match=rf"train.precision: 'fp8' is not allowed {allowed}"):
        build_trainer(config_for("fp8"), NUM_CLASSES, steps_per_epoch=1, input_shape=INPUT_SHAPE)


def step_until_applied(trainer, batch, max_steps=12):
    """Steps until the optimizer applies an update; a skipped step (non-finite float16 gradients) must leave the
    trainable weights alone and halve the loss scale. Returns the last step's logs and the number skipped."""
    for skipped in range(max_steps):
        scale = float(loss_scale(trainer.optimizer))
        weights = [variable.numpy().copy() for variable in trainer.trainable_variables]
        logs = trainer.train_on_batch(dict(batch), return_dict=True)
        if int(trainer.optimizer.iterations.numpy()) == 1:
            return logs, skipped
        assert float(loss_scale(trainer.optimizer)) == scale / 2
        for variable, before in zip(trainer.trainable_variables, weights):
            np.testing.assert_array_equal(variable.numpy(), before)
    raise AssertionError(f"no update applied in {max_steps} steps")


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_step_follows_the_float32_step(precision):
    """Same initial weights: the first applied update matches float32's to the compute dtype's precision. Under
    float16 the first steps overflow at the initial scale 2^15 (ArcFace's s = 64 makes large gradients): they are
    skipped and the scale halves until the gradients fit."""
    batch = make_batch()
    reference = build_trainer(config_for("float32"), NUM_CLASSES, steps_per_epoch=1, input_shape=INPUT_SHAPE)
    mixed = build_trainer(config_for(precision), NUM_CLASSES, steps_per_epoch=1, input_shape=INPUT_SHAPE)
    mixed.backbone.set_weights(reference.backbone.get_weights())
    mixed.head.set_weights(reference.head.get_weights())
    before = reference.head.kernel.numpy()
    want = reference.train_on_batch(dict(batch), return_dict=True)["loss"]
    got, skipped = step_until_applied(mixed, batch)
    got = got["loss"]
    assert skipped == 0 or precision == "mixed_float16"
    np.testing.assert_allclose(got, want, rtol=1e-2)
    want_change = reference.head.kernel.numpy() - before
    got_change = mixed.head.kernel.numpy() - before
    # relative error of the update: float16 keeps 11 significant bits, bfloat16 8 (and s = 64 amplifies them)
    relative_error = np.linalg.norm(got_change - want_change) / np.linalg.norm(want_change)
    assert relative_error < (0.05 if precision == "mixed_float16" else 0.25), relative_error


def test_overflowing_float16_step_is_skipped_everywhere_and_the_scale_halves():
    """A loss scale so large that the scaled loss overflows: the LossScaleOptimizer skips the backbone step and
    halves its scale, and Partial FC skips its centre shard update too."""
    trainer = build_trainer(
        config_for("mixed_float16", head="partial_fc"), NUM_CLASSES, steps_per_epoch=1, input_shape=INPUT_SHAPE
    )
    assert isinstance(trainer.head, PartialFCHead)
    batch = make_batch()
    trainer.optimizer.dynamic_scale.assign(1.0)
    centres = trainer.head.full_kernel()
    trainer.train_on_batch(dict(batch))
    assert not np.allclose(trainer.head.full_kernel(), centres)

    trainer.optimizer.dynamic_scale.assign(1e38)
    backbone = [variable.numpy().copy() for variable in trainer.backbone.trainable_variables]
    centres = trainer.head.full_kernel()
    trainer.train_on_batch(dict(batch))
    np.testing.assert_array_equal(trainer.head.full_kernel(), centres)
    for variable, before in zip(trainer.backbone.trainable_variables, backbone):
        np.testing.assert_array_equal(variable.numpy(), before)
    assert float(trainer.optimizer.dynamic_scale.numpy()) == pytest.approx(5e37, rel=1e-6)


class DenseProbe(Branch):
    """A cooperative branch: Dense(2) on the embedding, trained on mean |output| by its own optimizer."""

    def build_for(self, features_spec, head):
        self.dense = keras.layers.Dense(2, kernel_initializer="ones", name="probe_dense")
        self.dense.build((None, features_spec["embedding"][-1]))
        self.built = True

    def cooperative_variables(self):
        return self.dense.trainable_variables

    def loss(self, context):
        return tf.reduce_sum(tf.abs(tf.cast(self.dense(context.features["embedding"]), tf.float32)), axis=1)


def test_branch_with_its_own_unscaled_optimizer_gets_unscaled_gradients():
    """Main optimizer loss-scaled (2^15), branch optimizer plain: the branch's update matches float32's."""
    batch = make_batch()
    kernels = []
    for precision in ("float32", "mixed_float16"):
        keras.utils.set_random_seed(0)
        with precision_scope(precision):
            branch = DenseProbe(optimizer=keras.optimizers.SGD(0.1), name="probe")
            trainer = FaceTrainer(
                backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=6),
                get_head("softmax", NUM_CLASSES),
                branches=[branch],
            )
            trainer.compile(optimizer=wrap_optimizer(keras.optimizers.SGD(0.1), precision))
            trainer.build_all(INPUT_SHAPE)
        trainer.train_on_batch(dict(batch))
        kernels.append(branch.dense.kernel.numpy())
    assert np.abs(kernels[0] - 1.0).max() > 1e-3
    np.testing.assert_allclose(kernels[1], kernels[0], atol=2e-2 * np.abs(kernels[0] - 1.0).max())
