"""Grouped convolution: `grouped_conv2d` / `GroupedConv2D` against a numpy grouped convolution written from the
definition and against `keras.layers.Conv2D(groups=...)` (outputs and gradients), both computation paths; the same
variables as Conv2D, so weights load across the two; MobileFaceNet scale 2 uses it with Conv2D's kernel shape."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from tfface.backbones import get_backbone
from tfface.backbones.conv import DEPTHWISE_MAX_GROUP_INPUTS, Conv2D, GroupedConv2D, grouped_conv2d, pointwise_conv2d


def _numpy_grouped_conv(x, kernel, groups, stride, padding, dilation=1):
    """Cross-correlation from the definition: out[n, i, j, o] = sum over the kernel window and over the inputs of
    o's group (inputs g * cin_g .. g * cin_g + cin_g - 1 for g = o // cout_g) of x * kernel."""
    kh, kw, cin_g, cout = kernel.shape
    cout_g = cout // groups
    eff_h, eff_w = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    if padding == "same":  # stride 1 here: pad (eff - 1) split as TF does (extra at the bottom/right)
        ph, pw = eff_h - 1, eff_w - 1
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    n, h, w, _ = x.shape
    out_h, out_w = (h - eff_h) // stride + 1, (w - eff_w) // stride + 1
    out = np.zeros((n, out_h, out_w, cout))
    for o in range(cout):
        g = o // cout_g
        for i in range(out_h):
            for j in range(out_w):
                window = x[:, i * stride:i * stride + eff_h:dilation, j * stride:j * stride + eff_w:dilation,
                           g * cin_g:(g + 1) * cin_g]
                out[:, i, j, o] = np.einsum("nabc,abc->n", window, kernel[:, :, :, o])
    return out


CASES = [  # (in channels, out channels, groups, kernel, stride, padding, dilation)
    (8, 8, 4, 3, 1, "same", 1),       # 2 inputs per group: depthwise path (MobileFaceNet scale 2's shape)
    (6, 12, 3, 3, 2, "valid", 1),     # 2 inputs -> 4 outputs per group, strided
    (4, 4, 2, 3, 1, "same", 2),       # dilated
    (4, 8, 4, 1, 1, "valid", 1),      # 1x1, 1 input per group
    (2 * (DEPTHWISE_MAX_GROUP_INPUTS + 1), 6, 2, 3, 2, "valid", 1),  # many inputs per group: split path
]


@pytest.mark.parametrize("cin, cout, groups, kernel_size, stride, padding, dilation", CASES)
def test_grouped_conv2d_matches_the_definition(cin, cout, groups, kernel_size, stride, padding, dilation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 10, cin)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, cin // groups, cout)).astype("float32")
    got = grouped_conv2d(x, kernel, groups, strides=(stride, stride), padding=padding,
                         dilation_rate=(dilation, dilation))
    np.testing.assert_allclose(np.asarray(got), _numpy_grouped_conv(x, kernel, groups, stride, padding, dilation),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin, cout, groups, kernel_size, stride, padding, dilation", CASES)
def test_grouped_conv2d_layer_equals_keras_conv2d_groups_outputs_and_gradients(
        cin, cout, groups, kernel_size, stride, padding, dilation):
    options = dict(kernel_size=kernel_size, strides=stride, padding=padding, dilation_rate=dilation, groups=groups,
                   use_bias=True)
    reference, ours = keras.layers.Conv2D(cout, **options), GroupedConv2D(cout, **options)
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 9, 10, cin)).astype("float32"))
    reference.build(x.shape)
    ours.build(x.shape)
    assert [(v.path.split("/")[-1], tuple(v.shape)) for v in ours.weights] == \
        [(v.path.split("/")[-1], tuple(v.shape)) for v in reference.weights]
    ours.set_weights([w + 0.1 * np.random.default_rng(2).normal(size=w.shape) for w in reference.get_weights()])
    reference.set_weights(ours.get_weights())
    # a loss that weights every output differently, so a permuted output channel cannot pass
    weights = tf.constant(np.random.default_rng(3).normal(size=reference.compute_output_shape(x.shape)[1:]),
                          "float32")

    def value_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * weights) + 0.5 * tf.reduce_sum(y ** 2)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    for got, expected in zip(value_and_gradients(ours), value_and_gradients(reference)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_grouped_conv2d_rejects_channels_that_do_not_split():
    with pytest.raises(ValueError, match="do not split into 4 groups"):
        grouped_conv2d(np.zeros((1, 5, 5, 6), "float32"), np.zeros((3, 3, 2, 8), "float32"), 4)
    with pytest.raises(ValueError, match="channels_last"):
        GroupedConv2D(8, 3, groups=2, data_format="channels_first")


def test_weights_files_of_conv2d_groups_and_grouped_conv2d_load_both_ways(tmp_path):
    """Keras weights files key layers by class name and rank ("conv2d_1"): a plain Conv2D on each side of the grouped
    one checks that the ranks line up too."""
    def model(grouped_class):
        image = keras.Input((8, 8, 4))
        x = keras.layers.Conv2D(4, 1, name="before")(image)
        x = grouped_class(4, 3, padding="same", groups=2, use_bias=False, name="grouped")(x)
        return keras.Model(image, keras.layers.Conv2D(3, 1, name="after")(x))

    x = np.random.default_rng(4).normal(size=(1, 8, 8, 4)).astype("float32")
    for source_class, target_class in [(keras.layers.Conv2D, GroupedConv2D), (GroupedConv2D, keras.layers.Conv2D)]:
        source, target = model(source_class), model(target_class)
        path = str(tmp_path / f"{source_class.__module__}.weights.h5")
        source.save_weights(path)
        target.load_weights(path)
        np.testing.assert_allclose(target(x).numpy(), source(x).numpy(), rtol=1e-5, atol=1e-5)


def test_mobilefacenet_scale2_stage1_is_a_grouped_conv_with_conv2d_kernel_layout():
    model = get_backbone("mobilefacenet", input_shape=(32, 32, 3), scale=2, embedding_size=16)
    conv = model.get_layer("stage1_conv")
    assert isinstance(conv, GroupedConv2D) and conv.groups == 64
    assert tuple(conv.kernel.shape) == (3, 3, 2, 128)  # insightface's Conv2d(128, 128, groups=64) weight, HWIO
    assert isinstance(get_backbone("mobilefacenet", input_shape=(32, 32, 3)).get_layer("stage1_conv"),
                      keras.layers.DepthwiseConv2D)  # scale 1: groups == channels, a true depthwise conv


@pytest.mark.parametrize("use_bias, activation", [(False, None), (True, "relu")])
def test_pointwise_conv_trains_as_a_matmul_with_keras_outputs_and_gradients(use_bias, activation):
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 5, 6, 4)).astype("float32"))
    reference = keras.layers.Conv2D(3, 1, use_bias=use_bias, activation=activation)
    ours = Conv2D(3, 1, use_bias=use_bias, activation=activation)
    for layer in (reference, ours):
        layer.build(x.shape)
    ours.set_weights([w + 0.3 for w in reference.get_weights()])
    reference.set_weights(ours.get_weights())
    kernel = ours.kernel.numpy()
    # numpy from the definition: y[n, h, w, o] = sum_i x[n, h, w, i] kernel[0, 0, i, o]
    expected = np.einsum("nhwi,io->nhwo", x.numpy(), kernel[0, 0])
    np.testing.assert_allclose(np.asarray(pointwise_conv2d(x, kernel)), expected, rtol=1e-5, atol=1e-5)
    weights = tf.constant(np.random.default_rng(6).normal(size=(2, 5, 6, 3)).astype("float32"))

    def value_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * weights)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    got = value_and_gradients(ours)
    for value, reference_value in zip(got, value_and_gradients(reference)):
        np.testing.assert_allclose(value.numpy(), reference_value.numpy(), rtol=1e-5, atol=1e-5)
    if activation is None:  # d loss / d kernel = sum over pixels of x_i * weights_o
        np.testing.assert_allclose(got[2].numpy()[0, 0], np.einsum("nhwi,nhwo->io", x.numpy(), weights.numpy()),
                                   rtol=1e-4, atol=1e-4)
    # inference keeps the convolution op (exported graphs hold a Conv2D, not a MatMul)
    graph = tf.function(lambda v: ours(v, training=False)).get_concrete_function(x).graph
    assert {op.type for op in graph.get_operations()} & {"Conv2D"} and "MatMul" not in {
        op.type for op in graph.get_operations()}
