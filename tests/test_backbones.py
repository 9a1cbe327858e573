"""Backbones: registry, output contract (keys, shapes), parameter counts against insightface, BN options.

Parameter counts are recomputed here by hand from the reference layouts (PyTorch/Caffe layer by layer); Keras counts
no moving statistics as trainable, and insightface's frozen `features.weight` is absent here (gamma fixed at 1).
"""
import numpy as np
import pytest
import keras
import tensorflow as tf

from tfface.backbones import available, get_backbone
from tfface.backbones.blocks import STAGE_KEYS, torch_padding
from tfface.training.strategy import mirrored_strategy

OUTPUT_KEYS = set(STAGE_KEYS) | {"embedding"}
BN_EPSILON = 1e-5


def _output_shapes(model, input_shape, batch=1):
    outputs = model(np.zeros((batch, *input_shape), "float32"), training=False)
    assert set(outputs) == OUTPUT_KEYS
    return {key: tuple(value.shape[1:]) for key, value in outputs.items()}


def _trainable_count(model):
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def _batch_norms(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


# ---------------------------------------------------------------- registry and options


def test_available_lists_every_backbone():
    assert set(available()) == {
        "casianet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "lenetpp", "mobilefacenet",
        "sphereface20", "sphereface36", "sphereface64", "tiny",
    }


def test_unknown_name_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet9000'.*iresnet50"):
        get_backbone("resnet9000")


@pytest.mark.parametrize("name", ["tiny", "lenetpp", "sphereface20"])
def test_unknown_option_is_a_value_error_naming_it(name):
    with pytest.raises(ValueError, match=rf"backbone '{name}'.*'depth'"):
        get_backbone(name, depth=3)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"input_shape": (32, 32, 1)}, "input_shape"),
        ({"input_shape": (8, 32, 3)}, "input_shape"),
        ({"embedding_size": 0}, "embedding_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"width": 0}, "width"),
    ],
)
def test_bad_options_are_value_errors_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        get_backbone("tiny", **options)


def test_name_dropout_and_input_contract():
    model = get_backbone("tiny", width=4, embedding_size=5, dropout=0.25, name="small")
    assert model.name == "small"
    assert [tensor.name for tensor in model.inputs] == ["image"] and model.inputs[0].dtype == "float32"
    assert model.get_layer("embedding_dropout").rate == 0.25
    shapes = _output_shapes(model, (32, 32, 3))
    assert shapes["stage4"] == (2, 2, 4) and shapes["embedding"] == (5,)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [28, 32, 48, 64, 112])
def test_tiny_runs_at_many_input_sizes(size):
    model = get_backbone("tiny", input_shape=(size, size, 3))
    shapes = _output_shapes(model, (size, size, 3), batch=2)
    sides = [size]
    for _ in range(4):
        sides.append(-(-sides[-1] // 2))
    assert [shapes[key] for key in STAGE_KEYS] == [(side, side, 8) for side in sides]
    assert shapes["embedding"] == (16,)
    assert model.count_params() < 10_000


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("iresnet18", {}, [(112, 112, 64), (56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512), (512,)]),
        ("iresnet34", {"input_shape": (32, 32, 3), "embedding_size": 8},
         [(32, 32, 64), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512), (8,)]),
        ("sphereface20", {}, [(112, 96, 64), (56, 48, 64), (28, 24, 128), (14, 12, 256), (7, 6, 512), (512,)]),
        ("sphereface64", {"input_shape": (32, 32, 3)},
         [(32, 32, 64), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512), (512,)]),
        ("casianet", {}, [(96, 96, 64), (48, 48, 128), (24, 24, 192), (12, 12, 256), (6, 6, 320), (512,)]),
        ("casianet", {"input_shape": (100, 100, 3), "embedding_size": 320},
         [(100, 100, 64), (50, 50, 128), (25, 25, 192), (13, 13, 256), (7, 7, 320), (320,)]),
        ("mobilefacenet", {}, [(56, 56, 64), (56, 56, 64), (28, 28, 64), (14, 14, 128), (7, 7, 512), (512,)]),
        ("mobilefacenet", {"input_shape": (64, 64, 3), "scale": 2, "embedding_size": 128},
         [(32, 32, 128), (32, 32, 128), (16, 16, 128), (8, 8, 256), (4, 4, 512), (128,)]),
        ("lenetpp", {}, [(28, 28, 32), (14, 14, 64), (7, 7, 128), (4, 4, 128), (2, 2, 128), (2,)]),
    ],
)
def test_feature_map_and_embedding_shapes(name, options, expected):
    model = get_backbone(name, **options)
    input_shape = tuple(model.inputs[0].shape[1:])
    shapes = _output_shapes(model, input_shape)
    assert [shapes[key] for key in (*STAGE_KEYS, "embedding")] == expected


# ---------------------------------------------------------------- parameter counts


def _torch_iresnet_parameters(blocks_per_stage, embedding_size, final_map=7 * 7):
    """sum(p.numel() for p in insightface_iresnet.parameters()), layer by layer."""
    count = 3 * 9 * 64 + 2 * 64 + 64  # conv1, bn1, prelu
    inplanes = 64
    for planes, blocks in zip((64, 128, 256, 512), blocks_per_stage):
        for block in range(blocks):
            count += 2 * inplanes + 9 * inplanes * planes + 2 * planes + planes + 9 * planes * planes + 2 * planes
            if block == 0:  # every stage starts with stride 2: conv1x1 + BN shortcut
                count += inplanes * planes + 2 * planes
            inplanes = planes
    return count + 2 * 512 + 512 * final_map * embedding_size + embedding_size + 2 * embedding_size


@pytest.mark.parametrize(
    "name, blocks, published",
    [("iresnet18", (2, 2, 2, 2), None), ("iresnet50", (3, 4, 14, 3), 43.6e6), ("iresnet100", (3, 13, 30, 3), 65.2e6)],
)
def test_iresnet_parameter_counts_match_insightface(name, blocks, published):
    model = get_backbone(name)
    torch_count = _torch_iresnet_parameters(blocks, 512)
    assert _trainable_count(model) == torch_count - 512  # features.weight: frozen at 1 there, absent here
    if published is not None:
        assert abs(torch_count - published) < 0.05e6


def _torch_mobilefacenet_parameters(scale, embedding_size):
    def conv_block(c_in, c_out, kernel, groups=1):
        return kernel * kernel * c_in // groups * c_out + 2 * c_out + c_out

    def linear_block(c_in, c_out, kernel, groups=1):
        return kernel * kernel * c_in // groups * c_out + 2 * c_out

    def depthwise(c_in, c_out, hidden):
        return conv_block(c_in, hidden, 1) + conv_block(hidden, hidden, 3, hidden) + linear_block(hidden, c_out, 1)

    a, b = 64 * scale, 128 * scale
    return (
        conv_block(3, a, 3) + conv_block(a, a, 3, groups=64)
        + depthwise(a, a, 128) + 4 * depthwise(a, a, 128)
        + depthwise(a, b, 256) + 6 * depthwise(b, b, 256)
        + depthwise(b, b, 512) + 2 * depthwise(b, b, 256)
        + conv_block(b, 512, 1) + linear_block(512, 512, 7, groups=512) + 512 * embedding_size + 2 * embedding_size
    )


@pytest.mark.parametrize("scale, embedding_size", [(1, 128), (2, 512)])
def test_mobilefacenet_parameter_count_matches_insightface(scale, embedding_size):
    model = get_backbone("mobilefacenet", scale=scale, embedding_size=embedding_size)
    assert _trainable_count(model) == _torch_mobilefacenet_parameters(scale, embedding_size)
    if scale == 1:  # the paper: 0.99M parameters for the 128-D MobileFaceNet
        assert abs(_trainable_count(model) - 0.99e6) < 0.02e6


def test_sphereface_casianet_lenetpp_parameter_counts():
    def sphereface(units, embedding_size):
        count = 3 * 9 * 64 + 64 + 64  # the added stem conv (bias) + PReLU
        c_in = 64
        for c_out, n in zip((64, 128, 256, 512), units):
            count += 9 * c_in * c_out + c_out + c_out + n * 2 * (9 * c_out * c_out + c_out)
            c_in = c_out
        return count + 7 * 6 * 512 * embedding_size + embedding_size

    assert _trainable_count(get_backbone("sphereface20")) == sphereface((1, 2, 4, 1), 512)
    assert _trainable_count(get_backbone("sphereface64")) == sphereface((3, 8, 16, 3), 512)

    casia, c_in = 0, 3
    for c_out in (32, 64, 64, 128, 96, 192, 128, 256, 160, 320):
        casia += 9 * c_in * c_out + 2 * c_out
        c_in = c_out
    assert _trainable_count(get_backbone("casianet")) == casia + 320 * 512 + 512 + 512

    lenet, c_in = 0, 3
    for c_out in (32, 32, 64, 64, 128, 128):
        lenet += 25 * c_in * c_out + c_out + c_out
        c_in = c_out
    assert _trainable_count(get_backbone("lenetpp")) == lenet + 4 * 4 * 128 * 2 + 2


# ---------------------------------------------------------------- maths of particular layers


def test_torch_padding_matches_a_symmetrically_padded_numpy_convolution():
    image = keras.Input((4, 4, 1))
    padded, padding = torch_padding(image, 3, 2, "probe")
    conv = keras.layers.Conv2D(1, 3, strides=2, padding=padding, use_bias=False)
    model = keras.Model(image, conv(padded))
    kernel = np.arange(9, dtype="float32").reshape(3, 3)
    conv.set_weights([kernel.reshape(3, 3, 1, 1)])
    x = np.arange(16, dtype="float32").reshape(4, 4)
    reference_padded = np.pad(x, 1)
    expected = np.array(
        [[np.sum(reference_padded[2 * i:2 * i + 3, 2 * j:2 * j + 3] * kernel) for j in range(2)] for i in range(2)]
    )
    np.testing.assert_allclose(model(x[None, :, :, None])[0, :, :, 0], expected, rtol=1e-6)


def test_lenetpp_embedding_reads_stage3_and_stage4_is_its_max_pool():
    model = get_backbone("lenetpp")
    images = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype("float32")
    outputs = {key: keras.ops.convert_to_numpy(value) for key, value in model(images).items()}
    stage3 = outputs["stage3"]
    expected_stage4 = stage3.reshape(2, 2, 2, 2, 2, 128).max(axis=(2, 4))
    np.testing.assert_allclose(outputs["stage4"], expected_stage4, rtol=1e-6)
    kernel, bias = model.get_layer("embedding").get_weights()
    np.testing.assert_allclose(outputs["embedding"], stage3.reshape(2, -1) @ kernel + bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "casianet", "iresnet18"])
def test_embedding_batch_norm_has_its_scale_fixed_at_one(name):
    model = get_backbone(name, input_shape=(32, 32, 3), embedding_size=6)
    embedding_bn = model.get_layer("embedding")
    assert isinstance(embedding_bn, keras.layers.BatchNormalization)
    assert embedding_bn.gamma is None
    assert [weight.name for weight in embedding_bn.trainable_weights] == ["beta"]
    # training mode: embedding = (z - batch mean) / sqrt(batch var + eps) * 1 + beta, z the FC output
    probe = keras.Model(model.input, [model.get_layer("embedding_fc").output, model.get_layer("embedding").output])
    embedding_bn.beta.assign(np.linspace(-1.0, 1.0, 6).astype("float32"))
    images = np.random.default_rng(1).normal(size=(5, 32, 32, 3)).astype("float32")
    fc_output, embedding = (keras.ops.convert_to_numpy(t) for t in probe(images, training=True))
    expected = (fc_output - fc_output.mean(0)) / np.sqrt(fc_output.var(0) + BN_EPSILON) + np.linspace(-1, 1, 6)
    np.testing.assert_allclose(embedding, expected, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- synchronized batch norm


@pytest.mark.parametrize(
    "name, options",
    [("tiny", {}), ("casianet", {"input_shape": (32, 32, 3)}), ("mobilefacenet", {"input_shape": (32, 32, 3)}),
     ("iresnet18", {"input_shape": (32, 32, 3)})],
)
def test_sync_batchnorm_option_sets_every_batch_norm(name, options):
    synchronized = _batch_norms(get_backbone(name, sync_batchnorm=True, **options))
    local = _batch_norms(get_backbone(name, **options))
    assert synchronized and len(synchronized) == len(local)
    assert all(layer.synchronized for layer in synchronized)
    assert not any(layer.synchronized for layer in local)


def _per_replica_outputs(strategy, model, images):
    """Runs `model(training=True)` with images split in halves over the 2 replicas; returns the concatenated dict."""
    halves = tf.split(images, 2)
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: halves[context.replica_id_in_sync_group]
    )

    @tf.function
    def step(batch):
        return model(batch, training=True)

    outputs = strategy.run(step, args=(inputs,))
    return {key: np.concatenate([np.asarray(t) for t in strategy.experimental_local_results(value)])
            for key, value in outputs.items()}


def test_synchronized_batch_norm_uses_the_global_batch_across_replicas():
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    images = tf.random.stateless_normal((8, 16, 16, 3), seed=(1, 2))
    with strategy.scope():
        synchronized = get_backbone("tiny", input_shape=(16, 16, 3), sync_batchnorm=True)
        local = get_backbone("tiny", input_shape=(16, 16, 3))
    local.set_weights(synchronized.get_weights())
    reference = get_backbone("tiny", input_shape=(16, 16, 3))  # one device, the whole batch
    reference.set_weights(synchronized.get_weights())
    expected = reference(images, training=True)

    distributed = _per_replica_outputs(strategy, synchronized, images)
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(distributed[key], expected[key], rtol=1e-4, atol=1e-4)
    per_replica_stats = _per_replica_outputs(strategy, local, images)
    assert not np.allclose(per_replica_stats["embedding"], expected["embedding"], atol=1e-3)


# ---------------------------------------------------------------- saving


def test_tiny_round_trips_through_the_keras_format(tmp_path):
    model = get_backbone("tiny", input_shape=(28, 28, 3))
    images = np.random.default_rng(2).normal(size=(2, 28, 28, 3)).astype("float32")
    path = tmp_path / "tiny.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    for key, value in model(images).items():
        np.testing.assert_allclose(restored(images)[key], value, rtol=1e-6)
