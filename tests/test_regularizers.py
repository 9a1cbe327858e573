"""Center loss, center invariant loss and exclusive regularization: values and gradients against numpy, centre
updates by hand, the W projection, Eq. 15 warm-up, MirroredStrategy equivalence and config-built trainer steps."""
import json
from pathlib import Path

import numpy as np
import pytest
import keras
import tensorflow as tf

from tfface import backbones, heads
from tfface.errors import ConfigError
from tfface.regularizers import REGULARIZERS, CenterInvariantLoss, CenterLoss, ExclusiveRegularizer
from tfface.training import FaceTrainer, StepContext
from tfface.builder import build_trainer
from tfface.training.config import load_config
from tfface.training.strategy import mirrored_strategy

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "regularizers" / "configs"
INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 4
EMBEDDING = 3


class FakeHead(keras.layers.Layer):
    """Just the part of a margin head the regularizers read: num_classes and kernel [D, C]."""

    def __init__(self, kernel):
        super().__init__()
        self.num_classes = kernel.shape[1]
        self.kernel = self.add_weight(shape=kernel.shape, initializer=keras.initializers.Constant(kernel), name="kernel")


def context_for(embeddings, labels, head=None):
    embeddings = tf.convert_to_tensor(embeddings, tf.float32)
    return StepContext(
        batch={}, features={"embedding": embeddings}, labels=tf.constant(labels, tf.int32), head=head, step=tf.constant(0)
    )


def built(regularizer, centers):
    """The regularizer built for a head of len(centers) classes, its centres set to `centers` [C, D]."""
    regularizer.build_for({"embedding": (centers.shape[1],)}, FakeHead(np.zeros((centers.shape[1], len(centers)))))
    regularizer.centers.assign(centers)
    return regularizer


# ----------------------------------------------------------------------------------------------- numpy references
def numpy_center_loss(x, labels, centers):
    return np.array([0.5 * np.sum((x[i] - centers[y]) ** 2) for i, y in enumerate(labels)])


def numpy_center_update(centers, x, labels, alpha):
    """Wen et al.: c_j -= alpha * sum_{y_i = j}(c_j - x_i) / (1 + n_j), one class at a time."""
    updated = centers.copy()
    for j in range(len(centers)):
        members = [i for i, y in enumerate(labels) if y == j]
        delta = sum((centers[j] - x[i] for i in members), np.zeros(centers.shape[1])) / (1 + len(members))
        updated[j] = centers[j] - alpha * delta
    return updated


def numpy_cia_loss(labels, centers):
    tau = np.mean([np.dot(c, c) for c in centers])
    return np.array([0.25 * (np.dot(centers[y], centers[y]) - tau) ** 2 for y in labels])


def numpy_cia_gradient_eq20(labels, centers):
    """Eq. 20: 1/n_y (1 - 1/m) (||c_y||^2 - tau) c_y, n_y = examples of class y in the batch."""
    m = len(centers)
    tau = np.mean([np.dot(c, c) for c in centers])
    counts = np.bincount(labels, minlength=m)
    return np.stack(
        [(1 / counts[y]) * (1 - 1 / m) * (np.dot(centers[y], centers[y]) - tau) * centers[y] for y in labels]
    )


def numpy_exclusive(kernel):
    """Eq. 9 with explicit loops, and its gradient: for each i, the term cos(W_i, W_j*) of the nearest j*."""
    dim, count = kernel.shape
    norms = np.linalg.norm(kernel, axis=0)
    value, gradient = 0.0, np.zeros_like(kernel)
    for i in range(count):
        cosines = [-np.inf if j == i else kernel[:, i] @ kernel[:, j] / (norms[i] * norms[j]) for j in range(count)]
        nearest = int(np.argmax(cosines))
        cosine = cosines[nearest]
        value += cosine / count
        # d cos(a, b) / da = b / (|a||b|) - cos a / |a|^2
        a, b = kernel[:, i], kernel[:, nearest]
        gradient[:, i] += (b / (norms[i] * norms[nearest]) - cosine * a / norms[i] ** 2) / count
        gradient[:, nearest] += (a / (norms[i] * norms[nearest]) - cosine * b / norms[nearest] ** 2) / count
    return value, gradient


# ----------------------------------------------------------------------------------------------- center loss
def test_center_loss_value_and_gradient_match_numpy():
    rng = np.random.default_rng(1)
    x, labels, centers = rng.normal(size=(6, 3)), np.array([0, 2, 2, 1, 0, 2]), rng.normal(size=(4, 3))
    regularizer = built(CenterLoss(), centers.astype("float32"))
    embeddings = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        loss = regularizer.loss(context_for(embeddings, labels))
    np.testing.assert_allclose(loss.numpy(), numpy_center_loss(x, labels, centers), rtol=1e-5)
    # d/dx_i of 1/2 ||x_i - c_y||^2 is x_i - c_y
    np.testing.assert_allclose(tape.gradient(loss, embeddings).numpy(), x - centers[labels], rtol=1e-5, atol=1e-6)


def test_center_update_follows_wen_rule_by_hand():
    rng = np.random.default_rng(2)
    x, labels, centers = rng.normal(size=(5, 3)), np.array([1, 1, 3, 1, 0]), rng.normal(size=(4, 3))
    regularizer = built(CenterLoss(alpha=0.3), centers.astype("float32"))
    regularizer.after_update(context_for(x, labels))
    expected = numpy_center_update(centers, x, labels, 0.3)
    np.testing.assert_allclose(regularizer.centers.numpy(), expected, rtol=1e-5, atol=1e-6)
    # Class 2 is absent from the batch: its centre does not move. Class 1 (3 examples): c - 0.3 * (3c - sum x) / 4.
    np.testing.assert_array_equal(regularizer.centers.numpy()[2], centers[2].astype("float32"))
    by_hand = centers[1] - 0.3 * (3 * centers[1] - x[[0, 1, 3]].sum(axis=0)) / 4
    np.testing.assert_allclose(regularizer.centers.numpy()[1], by_hand, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.5, "0.5"])
def test_bad_alpha_is_named(alpha):
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(alpha=alpha)


# ----------------------------------------------------------------------------------------------- center invariant
def test_center_invariant_value_matches_eq3():
    rng = np.random.default_rng(3)
    centers, labels = rng.normal(size=(4, 3)), np.array([0, 3, 3, 1, 2, 0, 0])
    regularizer = built(CenterInvariantLoss(), centers.astype("float32"))
    loss = regularizer.loss(context_for(rng.normal(size=(7, 3)), labels))
    np.testing.assert_allclose(loss.numpy(), numpy_cia_loss(labels, centers), rtol=1e-5)


def test_center_invariant_gradient_is_eq20():
    rng = np.random.default_rng(4)
    centers, labels = rng.normal(size=(4, 3)), np.array([0, 3, 3, 1, 2, 0, 0])
    regularizer = built(CenterInvariantLoss(), centers.astype("float32"))
    embeddings = tf.constant(rng.normal(size=(7, 3)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        total = tf.reduce_sum(regularizer.loss(context_for(embeddings, labels)))
    gradient = tape.gradient(total, embeddings).numpy()
    np.testing.assert_allclose(gradient, numpy_cia_gradient_eq20(labels, centers), rtol=1e-4, atol=1e-6)
    # Direction (003, Fig. 3): a centre inside the mean-norm circle is pulled out (gradient against c_y).
    squared = np.sum(centers**2, axis=1)
    inside = int(np.argmin(squared))
    for row in np.flatnonzero(labels == inside):
        assert gradient[row] @ centers[inside] < 0


def test_center_invariant_gradient_by_finite_differences_of_eq4():
    """Treat c_y as the mean of its n_y batch examples (Eq. 4): central differences of sum_i L_I(i) w.r.t. one x_i,
    counting only example i's own term (the other terms are the other examples' losses), match the autodiff row."""
    rng = np.random.default_rng(5)
    centers, labels = rng.normal(size=(3, 2)), np.array([0, 0, 1, 2])
    x = rng.normal(size=(4, 2))
    regularizer = built(CenterInvariantLoss(), centers.astype("float32"))
    embeddings = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        total = tf.reduce_sum(regularizer.loss(context_for(embeddings, labels)))
    gradient = tape.gradient(total, embeddings).numpy()

    def own_term(i, shift):
        shifted = centers.copy()
        shifted[labels[i]] += shift / np.sum(labels == labels[i])  # dc_y/dx_i = 1/n_y (Eq. 19)
        return numpy_cia_loss(labels[i : i + 1], shifted)[0]

    step = 1e-5
    for i in range(4):
        numeric = [(own_term(i, step * e) - own_term(i, -step * e)) / (2 * step) for e in np.eye(2)]
        np.testing.assert_allclose(gradient[i], numeric, rtol=1e-3, atol=1e-6)


def test_center_invariant_moves_its_running_centres_like_center_loss():
    rng = np.random.default_rng(6)
    x, labels, centers = rng.normal(size=(5, 3)), np.array([0, 1, 1, 3, 3]), rng.normal(size=(4, 3))
    regularizer = built(CenterInvariantLoss(alpha=0.5), centers.astype("float32"))
    regularizer.after_update(context_for(x, labels))
    np.testing.assert_allclose(
        regularizer.centers.numpy(), numpy_center_update(centers, x, labels, 0.5), rtol=1e-5, atol=1e-6
    )


# ----------------------------------------------------------------------------------------------- exclusive
def test_exclusive_value_and_nearest_neighbour_subgradient_match_numpy():
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(3, 5))
    regularizer = ExclusiveRegularizer()
    head = FakeHead(kernel.astype("float32"))
    regularizer.build_for({}, head)
    with tf.GradientTape() as tape:
        loss = regularizer.loss(context_for(np.zeros((1, 3)), [0], head))
    gradient = tape.gradient(loss, head.kernel).numpy()
    expected_value, expected_gradient = numpy_exclusive(kernel)
    np.testing.assert_allclose(float(loss), expected_value, rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6)


def test_exclusive_gradient_on_unit_columns_is_eq14_projected_on_the_tangent_space():
    """Eq. 14: dL_r/dW_j = W_j' + sum_{i: nn(i) = j} W_i (over C); on unit columns autodiff gives its part
    orthogonal to W_j."""
    rng = np.random.default_rng(8)
    kernel = rng.normal(size=(4, 6))
    kernel /= np.linalg.norm(kernel, axis=0)
    head = FakeHead(kernel.astype("float32"))
    regularizer = ExclusiveRegularizer()
    regularizer.build_for({}, head)
    with tf.GradientTape() as tape:
        loss = regularizer.loss(context_for(np.zeros((1, 4)), [0], head))
    gradient = tape.gradient(loss, head.kernel).numpy()
    dots = kernel.T @ kernel
    np.fill_diagonal(dots, -np.inf)
    nearest = dots.argmax(axis=1)
    for j in range(6):
        eq14 = kernel[:, nearest[j]] + kernel[:, nearest == j].sum(axis=1)
        tangent = eq14 - (eq14 @ kernel[:, j]) * kernel[:, j]
        np.testing.assert_allclose(gradient[:, j], tangent / 6, rtol=1e-4, atol=1e-6)


def test_exclusive_of_a_regular_simplex_is_its_known_cosine():
    # 3 unit vectors 120 degrees apart in 2-D: every Sep_i = cos(120 deg) = -1/2.
    angles = np.deg2rad([90.0, 210.0, 330.0])
    kernel = np.stack([np.cos(angles), np.sin(angles)]) * np.array([1.0, 2.0, 0.5])
    head = FakeHead(kernel.astype("float32"))
    np.testing.assert_allclose(float(ExclusiveRegularizer().loss(context_for(np.zeros((1, 2)), [0], head))), -0.5)


def test_exclusive_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        ExclusiveRegularizer().build_for({}, FakeHead(np.ones((3, 1), "float32")))


# ----------------------------------------------------------------------------------------------- trainer steps
def make_batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(size, *INPUT_SHAPE)).astype("float32"),
        "label": np.array([0, 1, 1, 2, 3, 3, 3, 0][:size], "int32"),
    }


def make_trainer(regularizers, head="softmax"):
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=EMBEDDING, sync_batchnorm=True)
    trainer = FaceTrainer(backbone, heads.get_head(head, NUM_CLASSES), regularizers=regularizers)
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9))
    trainer.build_all(INPUT_SHAPE)
    return trainer


def test_after_a_step_every_column_of_w_has_unit_norm():
    trainer = make_trainer([ExclusiveRegularizer(weight=1.0)])
    assert not np.allclose(np.linalg.norm(trainer.head.kernel.numpy(), axis=0), 1.0)
    trainer.train_on_batch(make_batch(), return_dict=True)
    np.testing.assert_allclose(np.linalg.norm(trainer.head.kernel.numpy(), axis=0), 1.0, rtol=1e-6)


def test_exclusive_step_is_the_projected_gradient_step_eq13():
    """W' = normalize(W - lr (dL_s/dW + lambda dL_r/dW)) with plain SGD, computed by hand from numpy_exclusive."""
    trainer = make_trainer([ExclusiveRegularizer(weight=2.0)])
    trainer.optimizer = keras.optimizers.SGD(learning_rate=0.1)
    trainer.optimizer.build(trainer._main_variables())
    batch = make_batch()
    kernel = trainer.head.kernel.numpy().astype("float64")
    with tf.GradientTape() as tape:
        embeddings = trainer.backbone(batch["image"], training=True)["embedding"]
        logits = trainer.head(embeddings, batch["label"], training=True)["logits"]
        cross_entropy = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(batch["label"], logits, from_logits=True)
        )
    softmax_gradient = tape.gradient(cross_entropy, trainer.head.kernel).numpy()
    _, exclusive_gradient = numpy_exclusive(kernel)
    stepped = kernel - 0.1 * (softmax_gradient + 2.0 * exclusive_gradient)
    expected = stepped / np.linalg.norm(stepped, axis=0)
    trainer.train_on_batch(batch)
    np.testing.assert_allclose(trainer.head.kernel.numpy(), expected, atol=1e-5)


def test_center_loss_enters_the_trainer_loss_and_moves_centres_by_the_step_features():
    regularizer = CenterLoss(weight=0.5, alpha=0.5)
    trainer = make_trainer([regularizer])
    regularizer.centers.assign(np.random.default_rng(0).normal(size=(NUM_CLASSES, EMBEDDING)).astype("float32"))
    centers = regularizer.centers.numpy().astype("float64")
    batch = make_batch()
    embeddings = trainer.backbone(batch["image"], training=True)["embedding"].numpy()
    logs = trainer.train_on_batch(batch, return_dict=True)
    center_losses = numpy_center_loss(embeddings, batch["label"], centers)
    np.testing.assert_allclose(logs["center_loss"], center_losses.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], logs["identity_loss"] + 0.5 * center_losses.mean(), rtol=1e-5)
    expected = numpy_center_update(centers, embeddings, batch["label"], 0.5)
    np.testing.assert_allclose(regularizer.centers.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_regularizers", [
    lambda: [CenterLoss(weight=0.5, alpha=0.5), CenterInvariantLoss(weight=0.3, alpha=0.7)],
    lambda: [ExclusiveRegularizer(weight=1.0)],
], ids=["center+center_invariant", "exclusive"])
def test_mirrored_step_moves_centres_and_weights_as_one_device(make_regularizers):
    """Two replicas on a global batch of 8 give the centres, W and backbone of one device on the same 8."""
    batch = make_batch()
    rng = np.random.default_rng(9)
    single = make_trainer(make_regularizers())
    for regularizer in single.regularizers:
        if hasattr(regularizer, "centers"):
            regularizer.centers.assign(rng.normal(size=(NUM_CLASSES, EMBEDDING)).astype("float32"))
    initial = single.get_weights()  # includes the centres
    single.train_on_batch(batch)

    with mirrored_strategy(["/cpu:0", "/cpu:1"]).scope():
        mirrored = make_trainer(make_regularizers())
        mirrored.set_weights(initial)
    mirrored.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    for mine, theirs in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    for mine, theirs in zip(mirrored.regularizers, single.regularizers):
        if hasattr(mine, "centers"):
            replicas = mine.centers.value.values
            assert len(replicas) == 2
            for replica in replicas:
                np.testing.assert_allclose(replica.numpy(), theirs.centers.numpy(), atol=1e-6)
    if isinstance(mirrored.regularizers[0], ExclusiveRegularizer):
        for replica in mirrored.head.kernel.value.values:
            np.testing.assert_allclose(np.linalg.norm(replica.numpy(), axis=0), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------------------------- config
def config_with(tmp_path, head, regularizers):
    """A resolved config from a YAML file (JSON is YAML) with the given head and `regularizers:` list."""
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({
        "backbone": {"name": "tiny", "options": {"embedding_size": EMBEDDING}},
        "head": {"name": head},
        "train": {"epochs": 4, "batch_size": 8},
        "schedule": {"name": "constant", "learning_rate": 0.05},
        "regularizers": regularizers,
    }))
    return load_config(str(path))


def test_exclusive_warmup_follows_eq15_per_epoch(tmp_path):
    """Paper 004, Eq. 15: "Suppose lambda is the weight of exclusive regularization, t is time step (epoch), and N is
    the number of epochs for annealing. The effective exclusive weight lambda* warms up linearly":
    lambda*(t) = t / N lambda for t <= N, else lambda. With 5 steps an epoch, N = 2, lambda = 6: epoch 0 (steps 0-4)
    trains with 0, epoch 1 (steps 5-9) with 3, every later epoch with 6. `warmup_per: step` ramps every step."""
    regularizer = {"name": "exclusive", "weight": 6.0, "warmup_epochs": 2}
    config = config_with(tmp_path, "softmax", [regularizer])
    weight = build_trainer(config, NUM_CLASSES, steps_per_epoch=5, input_shape=INPUT_SHAPE).regularizers[0].loss_weight
    by_epoch = {0: 0.0, 4: 0.0, 5: 3.0, 9: 3.0, 10: 6.0, 14: 6.0, 40: 6.0}
    for step, expected in by_epoch.items():
        assert float(weight(step)) == expected, step

    config = config_with(tmp_path, "softmax", [dict(regularizer, warmup_per="step")])
    weight = build_trainer(config, NUM_CLASSES, steps_per_epoch=5, input_shape=INPUT_SHAPE).regularizers[0].loss_weight
    by_step = {0: 0.0, 1: 0.6, 4: 2.4, 5: 3.0, 7: 4.2, 10: 6.0, 40: 6.0}
    for step, expected in by_step.items():
        np.testing.assert_allclose(float(weight(step)), expected, rtol=1e-6)

    config = config_with(tmp_path, "softmax", [dict(regularizer, warmup_per="iteration")])
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.warmup_per must be one of epoch, step"):
        build_trainer(config, NUM_CLASSES, steps_per_epoch=5, input_shape=INPUT_SHAPE)


REGULARIZER_CONFIGS = {
    "softmax_cia.yaml": ("softmax", ["center_invariant"]),
    "sphereface_cia.yaml": ("sphereface", ["center_invariant"]),
    "softmax_center_cia.yaml": ("softmax", ["center", "center_invariant"]),
    "lsoftmax_center_cia.yaml": ("lsoftmax", ["center", "center_invariant"]),
    "regularface_softmax.yaml": ("normface", ["exclusive"]),
    "regularface_center.yaml": ("normface", ["center", "exclusive"]),
    "regularface_sphereface.yaml": ("sphereface", ["exclusive"]),
}


@pytest.mark.parametrize("file_name", sorted(REGULARIZER_CONFIGS))
def test_shipped_config_builds_a_trainer_that_steps_with_its_regularizers(file_name):
    """Each combination config, shrunk to the tiny backbone, builds through the builder and takes two steps."""
    head, names = REGULARIZER_CONFIGS[file_name]
    config = load_config(
        str(CONFIG_DIR / file_name),
        ["backbone.name=tiny", f"backbone.options.embedding_size={EMBEDDING}", "train.batch_size=8"],
    )
    assert config["head"]["name"] == head
    trainer = build_trainer(config, NUM_CLASSES, steps_per_epoch=1, input_shape=INPUT_SHAPE)
    assert [regularizer.name for regularizer in trainer.regularizers] == names
    trainer.train_on_batch(make_batch())
    logs = trainer.train_on_batch(make_batch(seed=1), return_dict=True)
    for name in names:
        assert np.isfinite(logs[f"{name}_loss"])
    for regularizer in trainer.regularizers:
        if isinstance(regularizer, ExclusiveRegularizer):
            np.testing.assert_allclose(np.linalg.norm(trainer.head.kernel.numpy(), axis=0), 1.0, rtol=1e-6)
        else:
            assert np.abs(regularizer.centers.numpy()).sum() > 0  # moved off their zero start


def test_regularface_softmax_config_is_the_angular_softmax_of_eq4():
    """Paper 004, Sec. 3.1: "Then we zero the bias and normalize each column of W to deduce the angular softmax
    loss", p_c(x_i) = exp(||x_i|| cos phi_ic) / sum_j exp(||x_i|| cos phi_ij) (Eq. 4), the L_s of Eq. 8.

    regularface_softmax.yaml's head has no bias and no fixed scale: its logits and cross entropy on random embeddings
    and an unnormalised W equal the float64 numpy Eq. 4 / Eq. 8, and after a training step W's columns are unit
    vectors (Eq. 13)."""
    config = load_config(
        str(CONFIG_DIR / "regularface_softmax.yaml"),
        ["backbone.name=tiny", f"backbone.options.embedding_size={EMBEDDING}", "train.batch_size=8"],
    )
    trainer = build_trainer(config, NUM_CLASSES, steps_per_epoch=1, input_shape=INPUT_SHAPE)
    head = trainer.head
    assert [variable.name for variable in head.weights] == ["kernel"]  # zero bias: there is none

    rng = np.random.default_rng(4)
    kernel = rng.normal(scale=3.0, size=(EMBEDDING, NUM_CLASSES))
    embeddings = rng.normal(scale=5.0, size=(6, EMBEDDING))
    labels = np.array([0, 1, 2, 3, 1, 0], np.int32)
    head.kernel.assign(kernel.astype(np.float32))
    outputs = head(embeddings.astype(np.float32), labels)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = (embeddings / norms) @ (kernel / np.linalg.norm(kernel, axis=0))
    expected_logits = norms * cosine
    np.testing.assert_allclose(outputs["logits"].numpy(), expected_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["plain_logits"].numpy(), expected_logits, rtol=1e-5, atol=1e-5)
    log_posterior = expected_logits - np.log(np.exp(expected_logits).sum(axis=1, keepdims=True))
    expected_loss = -log_posterior[np.arange(6), labels].mean()
    loss = keras.losses.sparse_categorical_crossentropy(labels, outputs["logits"], from_logits=True)
    np.testing.assert_allclose(float(np.mean(loss)), expected_loss, rtol=1e-5)

    trainer.train_on_batch(make_batch())
    np.testing.assert_allclose(np.linalg.norm(head.kernel.numpy(), axis=0), 1.0, rtol=1e-6)


def test_unknown_regularizer_and_option_are_named():
    with pytest.raises(ConfigError, match="unknown regularizer 'centre'; available: center, center_invariant"):
        REGULARIZERS.build("centre")
    with pytest.raises(ConfigError, match="regularizer 'exclusive'.*'alpha'"):
        REGULARIZERS.build("exclusive", alpha=0.5)
    with pytest.raises(ConfigError, match="regularizer 'center'.*'rate'"):
        REGULARIZERS.build("center", weight=0.008, rate=0.5)
