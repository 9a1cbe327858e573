"""FaceTrainer: loss values, plug-in extension points, gradient routing and MirroredStrategy equivalence."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from tfface import backbones, heads
from tfface.training import Branch, FaceTrainer, Gate, Regularizer
from tfface.training.strategy import mirrored_strategy, select_strategy

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 4


def make_batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(size, *INPUT_SHAPE)).astype("float32"),
        "label": (np.arange(size) % NUM_CLASSES).astype("int32"),
    }


def make_trainer(regularizers=(), branches=(), gate=None, sync_batchnorm=False, head="softmax", frozen=(), **options):
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=6, sync_batchnorm=sync_batchnorm)
    trainer = FaceTrainer(
        backbone, heads.get_head(head, NUM_CLASSES), regularizers=regularizers, branches=branches, gate=gate,
        frozen=frozen, **options,
    )
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9))
    trainer.build_all(INPUT_SHAPE)
    return trainer


def one_step(trainer, batch):
    return trainer.train_on_batch(dict(batch), return_dict=True)


def numpy_cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def test_identity_loss_is_the_cross_entropy_of_the_head_logits():
    trainer = make_trainer()
    batch = make_batch()
    embeddings = trainer.backbone(batch["image"], training=True)["embedding"].numpy()
    kernel, bias = trainer.head.kernel.numpy(), trainer.head.bias.numpy()
    expected = numpy_cross_entropy(embeddings @ kernel + bias, batch["label"]).mean()
    logs = one_step(trainer, batch)
    np.testing.assert_allclose(logs["identity_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    # Its gradient in closed form: d mean CE / d logits = (softmax - one-hot) / N; SGD's first step is w - 0.1 g.
    logits = embeddings.astype(np.float64) @ kernel + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    d_logits = (probabilities - np.eye(NUM_CLASSES)[batch["label"]]) / len(batch["label"])
    np.testing.assert_allclose(trainer.head.kernel.numpy(), kernel - 0.1 * embeddings.T @ d_logits, atol=1e-6)
    np.testing.assert_allclose(trainer.head.bias.numpy(), bias - 0.1 * d_logits.sum(axis=0), atol=1e-6)


class KernelNormRegularizer(Regularizer):
    """Model-wide term sum(W^2) / 2 and a hook that counts its calls."""

    def build_for(self, features_spec, head):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")
        self.built = True

    def loss(self, context):
        return 0.5 * tf.reduce_sum(tf.square(context.head.kernel))

    def after_update(self, context):
        self.calls.assign_add(1.0)


def test_model_wide_regularizer_adds_its_gradient_and_runs_its_hook():
    batch = make_batch()
    plain, regularized = make_trainer(), make_trainer(regularizers=[KernelNormRegularizer(weight=0.5, name="norm")])
    regularized.set_weights(plain.get_weights() + [np.float32(0.0)])
    kernel_before = plain.head.kernel.numpy()
    one_step(plain, batch)
    logs = one_step(regularized, batch)
    # SGD's first step with momentum is w - lr * g; the extra gradient of 0.5 * 0.5 * sum(W^2) is 0.5 * W.
    difference = regularized.head.kernel.numpy() - plain.head.kernel.numpy()
    np.testing.assert_allclose(difference, -0.1 * 0.5 * kernel_before, atol=1e-6)
    np.testing.assert_allclose(logs["norm_loss"], 0.5 * np.sum(kernel_before**2), rtol=1e-5)
    assert regularized.regularizers[0].calls.numpy() == 1.0


class DropFirstExampleGate(Gate):
    log_names = ("kept",)

    def weights_for(self, context):
        size = tf.shape(context.labels)[0]
        return tf.concat([tf.zeros([1]), tf.ones([size - 1])], axis=0)

    def logs(self, context):
        return {"kept": self.weights_for(context)}


def test_gated_out_example_contributes_no_gradient():
    """With scope "losses" (the gate weighs every per-example loss), a gated step on 8 examples equals an ungated step
    on the 7 kept ones with the loss rescaled by 7/8. (The default scope, Algorithm 1's, is tested in test_latse.py.)"""
    batch = make_batch()
    gated = make_trainer(gate=DropFirstExampleGate(scope="losses"))
    reference = make_trainer()
    reference.set_weights(gated.get_weights())
    with tf.GradientTape() as tape:
        features = gated.backbone(batch["image"], training=True)
        logits = gated.head(features["embedding"], batch["label"], training=True)["logits"]
        per_example = keras.losses.sparse_categorical_crossentropy(batch["label"], logits, from_logits=True)
        loss = tf.reduce_sum(per_example[1:]) / 8.0
    variables = reference._main_variables()
    gradients = tape.gradient(loss, gated._main_variables())
    reference.optimizer.apply(gradients, variables)
    logs = one_step(gated, batch)
    np.testing.assert_allclose(logs["kept"], 7 / 8)
    for mine, theirs in zip(gated.head.trainable_variables, reference.head.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-6)


class LinearAdversary(Branch):
    """Regresses a fake 2-vector target from the embedding; the main phase pushes the embedding to fool it."""

    has_adversary = True

    def build_for(self, features_spec, head):
        self.regressor = keras.layers.Dense(2, name="regressor")
        self.regressor.build((None, features_spec["embedding"][-1]))
        self.built = True

    def adversary_variables(self):
        return self.regressor.trainable_variables

    def adversary_loss(self, context):
        target = tf.ones((tf.shape(context.labels)[0], 2))
        return tf.reduce_sum(tf.abs(self.regressor(context.features["embedding"]) - target), axis=1)

    def loss(self, context):
        return tf.reduce_sum(tf.abs(self.regressor(context.features["embedding"])), axis=1)


def test_adversary_phase_updates_only_the_branch_and_main_phase_only_the_backbone():
    branch = LinearAdversary(weight=0.2, optimizer=keras.optimizers.SGD(0.1), name="adversary")
    trainer = make_trainer(branches=[branch])
    before_regressor = [v.numpy().copy() for v in branch.regressor.trainable_variables]
    before_head = [v.numpy().copy() for v in trainer.head.trainable_variables]
    before_backbone = [v.numpy().copy() for v in trainer.backbone.trainable_variables]

    batch = make_batch()
    features = trainer.backbone(batch["image"], training=True)
    with tf.GradientTape() as tape:
        target = tf.ones((8, 2))
        adversary = tf.reduce_mean(tf.reduce_sum(tf.abs(branch.regressor(features["embedding"]) - target), axis=1))
    expected_regressor = [
        before - 0.1 * gradient.numpy()
        for before, gradient in zip(before_regressor, tape.gradient(adversary, branch.regressor.trainable_variables))
    ]
    logs = one_step(trainer, batch)
    for value, expected in zip(branch.regressor.trainable_variables, expected_regressor):
        np.testing.assert_allclose(value.numpy(), expected, atol=1e-5)
    assert "adversary_adversary_loss" in logs and "adversary_loss" in logs
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before_backbone, trainer.backbone.trainable_variables))
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before_head, trainer.head.trainable_variables))

    # Main phase alone (the adversary's optimizer frozen at rate 0): the regressor must not move.
    branch.optimizer.learning_rate.assign(0.0)
    frozen_regressor = [v.numpy().copy() for v in branch.regressor.trainable_variables]
    one_step(trainer, batch)
    for value, before in zip(branch.regressor.trainable_variables, frozen_regressor):
        np.testing.assert_array_equal(value.numpy(), before)


def test_frozen_backbone_is_not_updated_and_runs_batchnorm_in_inference_mode():
    trainer = make_trainer(frozen=("backbone",))
    before = [v.numpy().copy() for v in trainer.backbone.weights]
    one_step(trainer, make_batch())
    for value, old in zip(trainer.backbone.weights, before):
        np.testing.assert_array_equal(value.numpy(), old)
    with pytest.raises(ValueError, match="train.freeze: unknown part 'neck'"):
        make_trainer(frozen=("neck",))


def test_frozen_batch_norm_keeps_statistics_and_scale_while_the_rest_trains():
    """freeze: [batch_norm] (a fine-tuning choice): every batch norm keeps its moving statistics (inference mode: a
    training-mode step would move them towards the batch's) and its gamma/beta; convolutions and the head train."""
    trainer = make_trainer(frozen=("batch_norm",))
    norms = [layer for layer in trainer.backbone._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    norm_ids = {id(v) for layer in norms for v in layer.weights}
    before = {id(v): v.numpy().copy() for v in trainer.backbone.weights}
    head_before = [v.numpy().copy() for v in trainer.head.trainable_variables]
    one_step(trainer, make_batch())
    for value in trainer.backbone.weights:
        if id(value) in norm_ids:
            np.testing.assert_array_equal(value.numpy(), before[id(value)])
    assert any(not np.allclose(value.numpy(), before[id(value)])
               for value in trainer.backbone.weights if id(value) not in norm_ids)
    assert any(not np.allclose(v.numpy(), b) for v, b in zip(trainer.head.trainable_variables, head_before))
    trainer.set_stage()  # the next stage trains them again
    assert all(layer.trainable for layer in norms)


def test_learning_rate_multipliers_scale_each_parts_step():
    """SGD's first step moves w by -lr g (empty momentum); with factors the backbone moves by -lr 0.1 g and the head
    by -lr 3 g, from the same weights and batch."""
    batch = make_batch()
    plain = make_trainer()
    scaled = make_trainer(learning_rate_multipliers={"backbone": 0.1, "head": 3.0})
    scaled.set_weights(plain.get_weights())
    parts = {"backbone": 0.1, "head": 3.0}
    before = {part: [v.numpy().copy() for v in getattr(plain, part).trainable_variables] for part in parts}
    one_step(plain, batch)
    one_step(scaled, batch)
    for part, factor in parts.items():
        for old, new_plain, new_scaled in zip(before[part], getattr(plain, part).trainable_variables,
                                              getattr(scaled, part).trainable_variables):
            np.testing.assert_allclose(new_scaled.numpy() - old, factor * (new_plain.numpy() - old), atol=1e-6)


def test_mirrored_step_equals_single_device_step():
    """Two replicas on a global batch of 8 give the weights of one device on the same 8 (sync BN)."""
    batch = make_batch()
    single = make_trainer(sync_batchnorm=True)
    initial = single.get_weights()
    one_step(single, batch)

    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored = make_trainer(sync_batchnorm=True)
        mirrored.set_weights(initial)
    dataset = tf.data.Dataset.from_tensors(batch)
    mirrored.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    for mine, theirs in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_auto_strategy_is_mirrored_whenever_more_than_one_device_is_visible():
    """trainers.train's default `train.strategy: auto`: MirroredStrategy over every GPU (without GPUs, every logical
    CPU device; conftest makes two), the default strategy when only one device is visible."""
    gpus, cpus = tf.config.list_logical_devices("GPU"), tf.config.list_logical_devices("CPU")
    devices = gpus or cpus
    strategy = select_strategy("auto")
    if len(devices) > 1:
        assert isinstance(strategy, tf.distribute.MirroredStrategy)
        assert strategy.num_replicas_in_sync == len(devices)
        assert sorted(name.split("/")[-1] for name in strategy.extended.worker_devices) == sorted(
            device.name.split("/")[-1] for device in devices
        )
    else:
        assert strategy is tf.distribute.get_strategy()
    assert len(cpus) == 2 or gpus  # the test setup's two logical CPU devices
    assert select_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="train.strategy: unknown strategy 'ring'"):
        select_strategy("ring")


def test_stage_without_identity_loss_and_with_frozen_parts_changes_nothing_it_should_not():
    regularizer = KernelNormRegularizer(weight=1.0, name="norm")
    trainer = make_trainer(regularizers=[regularizer])
    trainer.set_stage(frozen=("backbone",), identity_loss=False)
    backbone_before = [v.numpy().copy() for v in trainer.backbone.weights]
    kernel_before = trainer.head.kernel.numpy().copy()
    bias_before = trainer.head.bias.numpy().copy()
    one_step(trainer, make_batch())
    for value, old in zip(trainer.backbone.weights, backbone_before):
        np.testing.assert_array_equal(value.numpy(), old)
    # Only the regularizer's gradient W reaches the head: one SGD step scales W by (1 - lr).
    np.testing.assert_allclose(trainer.head.kernel.numpy(), 0.9 * kernel_before, rtol=1e-6)
    np.testing.assert_array_equal(trainer.head.bias.numpy(), bias_before)

    trainer.set_stage(plugins=[])
    calls = regularizer.calls.numpy()
    logs = one_step(trainer, make_batch())
    assert regularizer.calls.numpy() == calls and logs["identity_loss"] > 0
    with pytest.raises(ValueError, match="unknown plug-in.*ghost"):
        trainer.set_stage(plugins=["ghost"])


class LinearDecoder(Branch):
    """A cooperative branch trained by the main optimizer: sum of squares of a Dense(2) of the embedding."""

    def build_for(self, features_spec, head):
        self.decoder = keras.layers.Dense(2, name="decoder")
        self.decoder.build((None, features_spec["embedding"][-1]))
        self.built = True

    def cooperative_variables(self):
        return self.decoder.trainable_variables

    def loss(self, context):
        return tf.reduce_sum(tf.square(self.decoder(context.features["embedding"])), axis=1)


def test_a_stage_without_a_cooperative_branch_leaves_it_alone_and_warns_of_no_missing_gradient(recwarn):
    branch = LinearDecoder(weight=1.0, name="decoder")
    trainer = make_trainer(branches=[branch])
    trainer.set_stage(plugins=[])
    before = [v.numpy().copy() for v in branch.cooperative_variables()]
    one_step(trainer, make_batch())
    for value, old in zip(branch.cooperative_variables(), before):
        np.testing.assert_array_equal(value.numpy(), old)
    assert not [w for w in recwarn if "Gradients do not exist" in str(w.message)]
    trainer.set_stage(plugins=["decoder"])  # the branch's stage: the main optimizer trains it
    one_step(trainer, make_batch())
    assert any(not np.array_equal(value.numpy(), old) for value, old in zip(branch.cooperative_variables(), before))
