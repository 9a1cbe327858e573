"""LATSE's frontal decoder: the reversed ResNet-18, GLoss (Eq. 13-14) against numpy and finite differences, and the
momentum mean-image bank (Eq. 12) on one device and across two replicas."""
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.branches import BRANCHES
from tfface.branches.frontal_decoder import FrontalDecoder, generative_loss, reversed_resnet18
from tfface.training.plugins import StepContext
from tfface.training.strategy import mirrored_strategy

NUM_CLASSES = 4
EMBEDDING_SIZE = 6


# ---------------------------------------------------------------------------------------------- numpy references
def gaussian_window(size: int, sigma: float = 1.5) -> np.ndarray:
    coords = np.arange(size) - (size - 1) / 2.0
    line = np.exp(-(coords**2) / (2.0 * sigma**2))
    window = np.outer(line, line)
    return window / window.sum()


def valid_filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """2-D correlation of image [h, w] with window [s, s], valid positions only."""
    size = window.shape[0]
    rows, cols = image.shape[0] - size + 1, image.shape[1] - size + 1
    out = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = np.sum(window * image[i : i + size, j : j + size])
    return out


def numpy_ssim(x: np.ndarray, y: np.ndarray, filter_size: int) -> float:
    """SSIM of Wang et al. 2004 for [h, w, 3] images in [0, 1]: Gaussian window, K1 0.01, K2 0.03, mean of the map."""
    c1, c2 = 0.01**2, 0.03**2
    window = gaussian_window(filter_size)
    maps = []
    for channel in range(x.shape[-1]):
        a, b = x[..., channel], y[..., channel]
        mu_a, mu_b = valid_filter(a, window), valid_filter(b, window)
        var_a = valid_filter(a * a, window) - mu_a**2
        var_b = valid_filter(b * b, window) - mu_b**2
        cov = valid_filter(a * b, window) - mu_a * mu_b
        maps.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(maps))


def numpy_gloss(generated: np.ndarray, target: np.ndarray, filter_size: int) -> float:
    """Eq. 14 for one normalised image pair [h, w, 3], in pixel / 255 units."""
    x, y = (generated * 128.0 + 127.5) / 255.0, (target * 128.0 + 127.5) / 255.0
    return float(np.mean(np.abs(x - y)) + (1.0 - numpy_ssim(x, y, filter_size)) / 2.0)


def area_halve(images: np.ndarray) -> np.ndarray:
    """[N, 2h, 2w, 3] -> [N, h, w, 3]: the mean of each 2x2 block."""
    n, h, w, c = images.shape
    return images.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


# ---------------------------------------------------------------------------------------------- helpers
def make_branch(**options) -> FrontalDecoder:
    settings = {"image_size": (8, 8), "channels": (8, 4), "momentum": 0.75, "ssim_filter_size": 5, **options}
    branch = FrontalDecoder(**settings)
    branch.build_for({"embedding": (EMBEDDING_SIZE,)}, types.SimpleNamespace(num_classes=NUM_CLASSES))
    return branch


def context_for(images, labels, embeddings=None) -> StepContext:
    features = {} if embeddings is None else {"embedding": embeddings}
    return StepContext(batch={"image": images}, features=features, labels=labels, head=None, step=tf.constant(0))


def expected_bank(batches, momentum: float):
    """Eq. 12 applied once per step to each class of the step, starting from 'not seen'."""
    bank = np.zeros((NUM_CLASSES, 8, 8, 3))
    seen = np.zeros(NUM_CLASSES)
    for images, labels in batches:
        small = area_halve(images)
        for label in np.unique(labels):
            mean = small[labels == label].mean(axis=0)
            bank[label] = (1 - momentum) * mean + momentum * bank[label] if seen[label] else mean
            seen[label] = 1.0
    return bank, seen


def random_batch(rng, size=6):
    images = rng.uniform(-1, 1, size=(size, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES - 1, size=size).astype(np.int32)  # class 3 never appears
    return images, labels


# ---------------------------------------------------------------------------------------------- the network
def test_reversed_resnet18_upsamples_with_transposed_convolutions_in_eight_basic_blocks():
    decoder = reversed_resnet18(EMBEDDING_SIZE, (32, 48), channels=(16, 8, 8, 4))
    output = decoder(np.random.default_rng(0).normal(size=(3, EMBEDDING_SIZE)).astype(np.float32), training=False)
    assert tuple(output.shape) == (3, 32, 48, 3)
    assert np.all(np.abs(output.numpy()) < 1.0)
    upsampling = [layer for layer in decoder.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert len(upsampling) == 8 and all(layer.strides == (2, 2) for layer in upsampling)  # 4 paths + 4 shortcuts
    assert sum(isinstance(layer, keras.layers.Add) for layer in decoder.layers) == 8  # ResNet-18: 4 stages x 2
    assert decoder.get_layer("fc_reshape").output.shape[1:] == (2, 3, 16)
    default = reversed_resnet18(EMBEDDING_SIZE, (112, 112))
    assert [layer.filters for layer in default.layers if isinstance(layer, keras.layers.Conv2DTranspose)][::2] == [
        512, 256, 128, 64
    ]


def test_decoder_options_are_checked_by_name():
    with pytest.raises(ValueError, match=r"image_size 20x32 must be divisible by 2\^4 = 16"):
        reversed_resnet18(EMBEDDING_SIZE, (20, 32))
    with pytest.raises(ValueError, match="momentum"):
        FrontalDecoder(momentum=1.0)
    with pytest.raises(ValueError, match="ssim_filter_size must be in \\[1, 8\\]"):
        FrontalDecoder(image_size=(8, 8), ssim_filter_size=11)
    branch = BRANCHES.build("frontal_decoder", image_size=[16, 16], width_multiplier=0.25)
    assert branch.channels == (128, 64, 32, 16)


# ---------------------------------------------------------------------------------------------- GLoss
@pytest.mark.parametrize("filter_size", [11, 7])
def test_generative_loss_matches_l1_plus_half_ssim_distance(filter_size):
    rng = np.random.default_rng(1)
    generated = rng.uniform(-1, 1, size=(3, 16, 16, 3)).astype(np.float32)
    target = np.clip(generated + rng.normal(scale=0.3, size=generated.shape), -1, 1).astype(np.float32)
    target[2] = generated[2]  # identical images: GLoss 0
    loss = generative_loss(generated, target, filter_size).numpy()
    expected = [numpy_gloss(g.astype(np.float64), t.astype(np.float64), filter_size) for g, t in zip(generated, target)]
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)
    assert abs(loss[2]) < 1e-6


def test_generative_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    generated = rng.uniform(-0.9, 0.9, size=(1, 12, 12, 3))
    target = rng.uniform(-0.9, 0.9, size=(1, 12, 12, 3))
    variable = tf.Variable(generated.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = generative_loss(variable, target.astype(np.float32), 7)[0]
    gradient = tape.gradient(loss, variable).numpy()[0]
    step = 1e-4
    for position in [(0, 0, 0), (5, 6, 1), (11, 3, 2), (6, 6, 0), (2, 9, 1)]:
        plus, minus = generated[0].copy(), generated[0].copy()
        plus[position] += step
        minus[position] -= step
        numeric = (numpy_gloss(plus, target[0], 7) - numpy_gloss(minus, target[0], 7)) / (2 * step)
        np.testing.assert_allclose(gradient[position], numeric, rtol=2e-3, atol=1e-7)


def test_loss_is_gloss_against_the_bank_image_of_the_label_and_zero_for_unseen_classes():
    branch = make_branch()
    rng = np.random.default_rng(3)
    bank = rng.uniform(-1, 1, size=(NUM_CLASSES, 8, 8, 3)).astype(np.float32)
    branch.bank.assign(bank)
    branch.seen.assign([1.0, 1.0, 0.0, 1.0])
    embeddings = rng.normal(size=(4, EMBEDDING_SIZE)).astype(np.float32)
    labels = np.array([3, 0, 2, 0], np.int32)
    loss = branch.loss(context_for(np.zeros((4, 8, 8, 3), np.float32), labels, embeddings)).numpy()
    generated = branch.generate(embeddings, training=True).numpy()
    expected = [numpy_gloss(generated[i], bank[labels[i]], 5) if labels[i] != 2 else 0.0 for i in range(4)]
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the bank
def test_bank_follows_the_momentum_mean_of_each_class():
    branch = make_branch()
    rng = np.random.default_rng(4)
    batches = [random_batch(rng) for _ in range(3)]
    for images, labels in batches:
        branch.after_update(context_for(images, labels))
    bank, seen = expected_bank(batches, momentum=0.75)
    np.testing.assert_allclose(branch.seen.numpy(), seen)
    np.testing.assert_allclose(branch.bank.numpy(), bank, atol=1e-6)
    assert not branch.bank.trainable and branch.cooperative_variables() == branch.decoder.trainable_variables


def test_bank_is_identical_on_both_replicas_and_equals_one_device_on_the_global_batch():
    rng = np.random.default_rng(5)
    batches = [random_batch(rng, size=8) for _ in range(2)]
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        branch = make_branch()

    @tf.function
    def step(images, labels):
        def replica_step(images, labels):
            branch.after_update(context_for(images, labels))

        def half(array):
            return strategy.experimental_distribute_values_from_function(
                lambda context: array[4 * context.replica_id_in_sync_group : 4 * (context.replica_id_in_sync_group + 1)]
            )

        strategy.run(replica_step, args=(half(images), half(labels)))

    for images, labels in batches:
        step(tf.constant(images), tf.constant(labels))
    bank, seen = expected_bank(batches, momentum=0.75)
    replicas = strategy.experimental_local_results(branch.bank.value)
    assert len(replicas) == 2
    for replica_bank in replicas:
        np.testing.assert_allclose(replica_bank.numpy(), bank, atol=1e-6)
    for replica_seen in strategy.experimental_local_results(branch.seen.value):
        np.testing.assert_array_equal(replica_seen.numpy(), seen)
