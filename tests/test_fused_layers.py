"""Fused batch norm and PReLU: against numpy from the definition and against Keras's layers (outputs, gradients, moving
statistics); weights files load across the two implementations; the backbones build with them."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from tfface.backbones import get_backbone
from tfface.backbones.fused_layers import BatchNormalization, PReLU

EPSILON = 1e-5
MOMENTUM = 0.9


def _random(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (6, 3)])
def test_batch_norm_training_matches_the_definition_and_keras(shape):
    x = _random(shape, 0) * 2.0 + 1.5
    ours = BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON)
    reference = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON)
    for layer in (ours, reference):
        layer.build(shape)
    weights = [_random((3,), 1), _random((3,), 2), _random((3,), 3), np.abs(_random((3,), 4)) + 0.5]
    ours.set_weights(weights)
    reference.set_weights(weights)
    loss_weights = tf.constant(_random(shape, 5))
    x = tf.constant(x)

    def run(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * loss_weights)
        return [y, *tape.gradient(loss, [x, layer.gamma, layer.beta])]

    got, expected = run(ours), run(reference)
    # numpy: normalise with the biased batch variance over every axis but the last
    axes = tuple(range(len(shape) - 1))
    mean, variance = x.numpy().mean(axis=axes), x.numpy().var(axis=axes)
    gamma, beta, moving_mean, moving_variance = weights
    np.testing.assert_allclose(got[0].numpy(), (x.numpy() - mean) / np.sqrt(variance + EPSILON) * gamma + beta,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), MOMENTUM * moving_mean + (1 - MOMENTUM) * mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), MOMENTUM * moving_variance + (1 - MOMENTUM) * variance,
                               rtol=1e-5)
    for value, reference_value in zip(got, expected):
        np.testing.assert_allclose(value.numpy(), reference_value.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-6)
    # inference uses the moving statistics (Keras's own code path)
    np.testing.assert_allclose(ours(x, training=False).numpy(), reference(x, training=False).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_batch_norm_without_gamma_and_in_bfloat16_matches_keras():
    x = tf.constant(_random((3, 4, 4, 5), 11))
    for policy in ("float32", "mixed_bfloat16"):
        ours = BatchNormalization(scale=False, epsilon=EPSILON, dtype=policy)
        reference = keras.layers.BatchNormalization(scale=False, epsilon=EPSILON, dtype=policy)
        inputs = tf.cast(x, "bfloat16") if policy == "mixed_bfloat16" else x
        got, expected = ours(inputs, training=True), reference(inputs, training=True)
        assert got.dtype == expected.dtype
        tolerance = 2e-2 if policy == "mixed_bfloat16" else 1e-5
        np.testing.assert_allclose(tf.cast(got, "float32").numpy(), tf.cast(expected, "float32").numpy(),
                                   rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(ours.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-3)


def test_weights_files_load_across_keras_and_fused_layers(tmp_path):
    def model(bn_class, prelu_class):
        image = keras.Input((6, 6, 3))
        x = keras.layers.BatchNormalization(name="first")(image)
        x = keras.layers.PReLU(shared_axes=[1, 2], name="act")(bn_class(name="second")(x))
        x = prelu_class(shared_axes=[1, 2], name="act2")(x)
        return keras.Model(image, keras.layers.BatchNormalization(name="third")(x))

    x = _random((2, 6, 6, 3), 9)
    pairs = [((keras.layers.BatchNormalization, keras.layers.PReLU), (BatchNormalization, PReLU)),
             ((BatchNormalization, PReLU), (keras.layers.BatchNormalization, keras.layers.PReLU))]
    for source_classes, target_classes in pairs:
        source, target = model(*source_classes), model(*target_classes)
        source.set_weights([w + np.random.default_rng(10).uniform(0.1, 0.5, size=w.shape).astype("float32")
                            for w in source.get_weights()])
        path = str(tmp_path / f"{source_classes[0].__module__}.weights.h5")
        source.save_weights(path)
        target.load_weights(path)
        np.testing.assert_allclose(target(x, training=False).numpy(), source(x, training=False).numpy(), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("shape, shared_axes", [((3, 4, 5, 6), [1, 2]), ((4, 6), None), ((2, 3, 4, 5), [1])])
def test_prelu_training_matches_the_definition_and_keras(shape, shared_axes):
    x = tf.constant(_random(shape, 20))
    ours, reference = PReLU(shared_axes=shared_axes), keras.layers.PReLU(shared_axes=shared_axes)
    for layer in (ours, reference):
        layer.build(shape)
    alpha = _random(tuple(ours.alpha.shape), 21)  # negative and positive slopes, some above 1
    ours.set_weights([alpha])
    reference.set_weights([alpha])
    upstream = _random(shape, 22)

    def run(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * upstream)
        return tape.gradient(loss, [x, layer.alpha])

    # numpy from the definition: y = x (x > 0), alpha x (x <= 0); dy/dx = 1 or alpha; dy/dalpha = 0 or x, summed
    # over the batch and the shared axes
    xs = x.numpy()
    positive = xs > 0
    slope = np.broadcast_to(alpha, shape)
    d_alpha = np.where(positive, 0.0, upstream * xs)
    summed = tuple([0] + [axis + 1 for axis, size in enumerate(alpha.shape) if size == 1])
    d_alpha = d_alpha.sum(axis=summed, keepdims=True).reshape(alpha.shape)
    np.testing.assert_allclose(ours(x, training=True).numpy(), np.where(positive, xs, slope * xs), rtol=1e-6)
    d_x, d_alpha_ours = run(ours)
    np.testing.assert_allclose(d_x.numpy(), np.where(positive, upstream, slope * upstream), rtol=1e-6)
    np.testing.assert_allclose(d_alpha_ours.numpy(), d_alpha, rtol=1e-5, atol=1e-5)
    for got, expected in zip(run(ours), run(reference)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours(x, training=False).numpy(), reference(x).numpy(), rtol=1e-6)


def test_prelu_in_bfloat16_and_inference_graph_has_no_xla_call():
    x = tf.constant(_random((2, 3, 3, 4), 23))
    ours = PReLU(shared_axes=[1, 2], dtype="mixed_bfloat16")
    reference = keras.layers.PReLU(shared_axes=[1, 2], dtype="mixed_bfloat16")
    got, expected = ours(tf.cast(x, "bfloat16"), training=True), reference(tf.cast(x, "bfloat16"))
    assert got.dtype == expected.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(got, "float32").numpy(), tf.cast(expected, "float32").numpy(), rtol=1e-2)
    # exported models trace inference: Keras's ops, no XLA-compiled call inside the graph
    graph = tf.function(lambda v: ours(v, training=False)).get_concrete_function(
        tf.TensorSpec((None, 3, 3, 4), tf.bfloat16)).graph.as_graph_def()
    assert not any(node.attr["_XlaMustCompile"].b for node in graph.node)
    assert not any(function.attr["_XlaMustCompile"].b for function in graph.library.function)


def test_backbones_build_with_the_fused_layers():
    model = get_backbone("iresnet18", input_shape=(32, 32, 3), embedding_size=8)
    assert isinstance(model.get_layer("stem_bn"), BatchNormalization)
    assert isinstance(model.get_layer("stem_prelu"), PReLU)
    outputs = model(np.zeros((2, 32, 32, 3), "float32"), training=True)
    assert outputs["embedding"].shape == (2, 8)
