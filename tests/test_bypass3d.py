"""3D-BERL bypass: decoders and rendering by hand, the aux nets' layouts, gradient routing, stages, MirroredStrategy."""
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface import backbones, heads
from tfface.branches import BRANCHES
from tfface.branches.bypass3d import (
    Bypass3D,
    clamp_border,
    decode_albedo,
    decode_depth,
    decode_light,
    decode_view,
    reconstruction_l1,
    render,
    to_unit_pixels,
)
from tfface.branches.image_nets import parameter_encoder
from tfface.branches.reconstruction_nets import canonical_map_net
from tfface.rendering import intrinsics_from_fov
from tfface.training import FaceTrainer
from tfface.training.config import load_config
from tfface.training.plugins import StepContext
from tfface.training.strategy import mirrored_strategy

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "bypass3d" / "configs"
INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 4
SMALL = {"map_size": 8, "ira_width": 4, "code_size": 8, "iia_width": 4, "march_steps": 2,
         "refine_steps": 1}
# Backbone layers that come after stage 3 in `tiny`: L_recon must not reach them.
AFTER_STAGE3 = ("stage4", "output_bn", "embedding")


def make_batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(-1.0, 1.0, size=(size, *INPUT_SHAPE)).astype("float32"),
        "label": (np.arange(size) % NUM_CLASSES).astype("int32"),
    }


def make_bypass(weight=1.0, epsilon=1e-7, **options):
    optimizer = keras.optimizers.Adam(1e-3, epsilon=epsilon)
    return Bypass3D(name="bypass3d", weight=weight, optimizer=optimizer, **{**SMALL, **options})


def make_trainer(branches=(), sync_batchnorm=False):
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=6, width=4,
                                      sync_batchnorm=sync_batchnorm)
    trainer = FaceTrainer(backbone, heads.get_head("softmax", NUM_CLASSES), branches=branches)
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9))
    trainer.build_all(INPUT_SHAPE)
    return trainer


def one_step(trainer, batch):
    return trainer.train_on_batch(dict(batch), return_dict=True)


# ------------------------------------------------------------------------------------------------ pure maths


def test_decoders_follow_their_formulas():
    raw_view = np.array([[0.5, -1.0, 0.25, 1.0, -0.5, 0.2]], np.float32)
    angles, translation = decode_view(raw_view, 60.0, (0.1, 0.2, 0.3))
    np.testing.assert_allclose(angles, [[math.radians(30), math.radians(-60), math.radians(15)]], rtol=1e-6)
    np.testing.assert_allclose(translation, [[0.1, -0.1, 0.06]], rtol=1e-6)

    light = decode_light(np.array([[-1.0, 0.5, 0.3, -0.7]], np.float32))
    np.testing.assert_allclose([light[k][0] for k in ("ambient", "diffuse", "l_dx", "l_dy")], [0.0, 0.75, 0.3, -0.7],
                               rtol=1e-6)

    raw_depth = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    centred = raw_depth - raw_depth.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(decode_depth(raw_depth, 0.9, 1.1), 1.0 + 0.1 * np.tanh(centred), rtol=1e-6)
    np.testing.assert_allclose(decode_albedo(np.array([-1.0, 0.0, 0.5])), [0.0, 0.5, 0.75])
    np.testing.assert_allclose(to_unit_pixels(np.array([(0 - 127.5) / 128, (255 - 127.5) / 128])), [0.0, 1.0],
                               atol=1e-6)


def test_clamp_border_sets_the_outer_columns():
    depth = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
    expected = depth.copy()
    expected[:, :, [0, -1]] = 9.0
    np.testing.assert_array_equal(clamp_border(depth, 9.0, columns=1), expected)
    np.testing.assert_array_equal(clamp_border(depth, 9.0, columns=0), depth)


def test_reconstruction_l1_by_hand():
    image = np.zeros((2, 2, 2, 3), np.float32)
    target = np.arange(24, dtype=np.float32).reshape(2, 2, 2, 3) / 10.0 - 1.0
    expected = [np.abs(target[0]).sum() / 12.0, np.abs(target[1]).sum() / 12.0]  # 0.45, 0.75
    np.testing.assert_allclose(reconstruction_l1(image, target), expected, rtol=1e-6)


def test_flat_face_renders_the_hand_computed_lambertian_image_and_gradients():
    """A plane at 1 m seen from the canonical view: n = (0, 0, 1), so I_hat = a (k_a + k_d / |(l_dx, l_dy, 1)|),
    and d sum(I_hat) / d(k_a, k_d, l_dx) = sum(a) (1, 1 / r, -k_d l_dx / r^3) with r = |(l_dx, l_dy, 1)|."""
    rng = np.random.default_rng(1)
    albedo = rng.uniform(0.1, 0.9, (1, 8, 8, 3)).astype(np.float32)
    depth = np.ones((1, 8, 8), np.float32)
    k_a, k_d, l_dx, l_dy = (tf.Variable([value]) for value in (0.3, 0.6, 0.4, -0.2))
    with tf.GradientTape() as tape:
        light = {"ambient": k_a, "diffuse": k_d, "l_dx": l_dx, "l_dy": l_dy}
        result = render(depth, albedo, light, np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32),
                        intrinsics_from_fov(10.0, 8, 8), march_steps=4)
        total = tf.reduce_sum(result["image"])
    r = math.sqrt(1.0 + 0.4**2 + 0.2**2)
    np.testing.assert_allclose(result["canonical"], albedo * (0.3 + 0.6 / r), rtol=1e-5)
    np.testing.assert_allclose(result["image"], albedo * (0.3 + 0.6 / r), atol=1e-4)
    np.testing.assert_array_equal(result["valid"], 1.0)
    gradients = [g.numpy()[0] for g in tape.gradient(total, [k_a, k_d, l_dx])]
    np.testing.assert_allclose(gradients, albedo.sum() * np.array([1.0, 1.0 / r, -0.6 * 0.4 / r**3]), rtol=1e-4)


def test_reconstruction_l1_gradient_is_the_sign_of_the_error_over_the_pixel_count():
    rng = np.random.default_rng(3)
    image = tf.Variable(rng.uniform(size=(1, 3, 3, 3)).astype(np.float32))
    target = rng.uniform(size=(1, 3, 3, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = reconstruction_l1(image, target)[0]
    np.testing.assert_allclose(tape.gradient(loss, image), np.sign(image.numpy() - target) / 27.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ networks


def test_iia_is_five_conv_relu_and_a_conv_tanh_head_at_64():
    net = parameter_encoder(6, image_size=64, width=2)
    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.activation.__name__ for layer in convs] == ["relu"] * 5 + ["tanh"]
    output = net(np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32))
    assert output.shape == (2, 6) and np.all(np.abs(output) < 1.0)


def test_ira_decodes_14x14_stage3_features_to_64x64_maps_with_the_seven_layer_encoder():
    net = canonical_map_net((14, 14, 8), 3, map_size=64, width=4, code_size=16, output_activation="tanh")
    encoder = [type(layer).__name__ for layer in net.layers[:7]]
    assert encoder == ["Conv2D", "GroupNormalization", "LeakyReLU", "Conv2D", "LeakyReLU", "Conv2D", "ReLU"]
    code = np.zeros((2, 14, 14, 8), np.float32)
    for layer in net.layers[:7]:
        code = layer(code)
    assert code.shape == (2, 1, 1, 16)  # 14 -> 7 -> 4 -> 1x1 code
    maps = net(np.random.default_rng(0).normal(size=(2, 14, 14, 8)).astype(np.float32))
    assert maps.shape == (2, 64, 64, 3) and np.all(np.abs(maps) < 1.0)
    with pytest.raises(ValueError, match="map_size must be a power of two"):
        canonical_map_net((14, 14, 8), 1, map_size=48)


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="feature 'stage9' is not a backbone output"):
        make_trainer(branches=[make_bypass(feature="stage9")])
    with pytest.raises(ValueError, match="feature 'embedding' must be a feature map"):
        make_trainer(branches=[make_bypass(feature="embedding")])
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        make_bypass(min_depth=1.2)
    with pytest.raises(ValueError, match="colour"):
        BRANCHES.build("bypass3d", name="bypass3d", weight=1.0, warmup_steps=0, colour=3)


# ------------------------------------------------------------------------------------------------ in the trainer


@pytest.mark.parametrize("symmetry_weight", [0.0, 0.5])
def test_recon_loss_reaches_the_aux_nets_and_stages_1_to_3_only(symmetry_weight):
    branch = make_bypass(symmetry_weight=symmetry_weight)
    trainer = make_trainer(branches=[branch])
    batch = make_batch()
    variables = trainer.backbone.trainable_variables + branch.cooperative_variables()
    with tf.GradientTape() as tape:
        features = trainer.backbone(batch["image"], training=True)
        context = StepContext(batch=batch, features=features, labels=batch["label"], head=trainer.head, step=0)
        loss = tf.reduce_mean(branch.loss(context))
    gradients = dict(zip([v.path for v in variables], tape.gradient(loss, variables)))
    kernels = [v.path for v in trainer.backbone.trainable_variables]
    after = [path for path in kernels if path.startswith(AFTER_STAGE3)]
    before = [path for path in kernels if path.startswith(("stem", "stage1", "stage2", "stage3"))]
    assert len(after) >= 4 and len(before) >= 8 and len(after) + len(before) == len(kernels)
    for path in after:
        assert gradients[path] is None or not np.any(gradients[path].numpy()), path
    for path in before:
        assert gradients[path] is not None and np.any(gradients[path].numpy()), path
    for net in (branch.view_net, branch.light_net, branch.depth_net, branch.albedo_net):
        reached = [np.any(gradients[v.path].numpy()) for v in net.trainable_variables if gradients[v.path] is not None]
        assert any(reached), net.name  # (zero-initialised heads pass gradient to their own kernel first)


def test_identity_loss_and_its_update_beyond_stage3_do_not_change_with_the_branch():
    """Same start, one step with and without the bypass (weight gamma_2 = 0.5): equal FR loss, equal updates of
    stage 4, the embedding layer and the head; different stages 1-3; loss = L_FR + 0.5 L_recon."""
    batch = make_batch()
    plain = make_trainer()
    branch = make_bypass(weight=0.5)
    with_branch = make_trainer(branches=[branch])
    with_branch.backbone.set_weights(plain.backbone.get_weights())
    with_branch.head.set_weights(plain.head.get_weights())
    plain_logs, branch_logs = one_step(plain, batch), one_step(with_branch, batch)
    np.testing.assert_allclose(branch_logs["identity_loss"], plain_logs["identity_loss"], rtol=1e-6)
    np.testing.assert_allclose(branch_logs["loss"], plain_logs["identity_loss"] + 0.5 * branch_logs["bypass3d_loss"],
                               rtol=1e-5)
    mine = {v.path: v.numpy() for v in with_branch.backbone.weights}
    for variable in plain.backbone.weights:
        if variable.path.startswith(AFTER_STAGE3):
            np.testing.assert_allclose(mine[variable.path], variable.numpy(), atol=1e-6, err_msg=variable.path)
    changed = [not np.allclose(mine[v.path], v.numpy()) for v in plain.backbone.trainable_variables
               if v.path.startswith("stage3")]
    assert any(changed)
    for theirs, ours in zip(plain.head.weights, with_branch.head.weights):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)


def _snapshot(variables):
    return [v.numpy().copy() for v in variables]


def _moved(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


def test_the_three_stages_train_what_they_should():
    branch = make_bypass()
    trainer = make_trainer(branches=[branch])
    batch = make_batch()
    nets = {net.name: net.trainable_variables for net in (branch.view_net, branch.light_net, branch.depth_net,
                                                            branch.albedo_net)}
    parts = {"backbone": trainer.backbone.weights, "head": trainer.head.weights, **nets}

    def step():
        before = {name: _snapshot(variables) for name, variables in parts.items()}
        logs = one_step(trainer, batch)
        return logs, {name: any(_moved(before[name], variables)) for name, variables in parts.items()}

    trainer.set_stage(plugins=[])  # 1: face recognition only
    logs, moved = step()
    assert "bypass3d_loss" in logs and moved["backbone"] and moved["head"]
    assert not any(moved[name] for name in nets)

    trainer.set_stage(frozen=("backbone", "head"), identity_loss=False, plugins=["bypass3d"])  # 2: aux only
    logs, moved = step()
    np.testing.assert_allclose(logs["loss"], logs["bypass3d_loss"], rtol=1e-6)
    assert all(moved[name] for name in nets) and not moved["backbone"] and not moved["head"]

    trainer.set_stage(plugins=["bypass3d"])  # 3: joint
    _, moved = step()
    assert all(moved.values())


def test_mirrored_step_equals_single_device_step():
    """Two replicas on a global batch of 8 give the weights of one device on the same 8 (sync BN, Adam aux nets).

    Adam's first step is lr g / (|g| + epsilon): a larger epsilon keeps gradients near zero, whose sign is round-off
    noise, from moving by a full lr.
    """
    batch = make_batch()
    single = make_trainer(branches=[make_bypass(epsilon=1e-2)], sync_batchnorm=True)
    initial = single.get_weights()
    one_step(single, batch)

    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = make_trainer(branches=[make_bypass(epsilon=1e-2)], sync_batchnorm=True)
        mirrored.set_weights(initial)
    mirrored.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
    for mine, theirs in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


def _randomise_zero_heads(branch, seed=0):
    """Gives the zero-initialised output layers (Phi_w, Phi_d) small random weights: a turned view, a non-flat depth."""
    rng = np.random.default_rng(seed)
    for net in (branch.view_net, branch.depth_net):
        for variable in net.trainable_variables:
            if not np.any(variable.numpy()):
                variable.assign(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))


def test_symmetry_loss_adds_the_l1_of_the_render_of_the_flipped_depth_and_albedo():
    """loss = l1 + w mean |render(d[:, :, ::-1], a[:, :, ::-1], same light and view) - target| (numpy flips and L1);
    weight 0 gives Eq. 6 alone, as before the option existed."""
    batch = make_batch(size=4)
    plain = make_bypass()
    trainer = make_trainer(branches=[plain])
    _randomise_zero_heads(plain)
    features = trainer.backbone(batch["image"], training=False)
    context = StepContext(batch=batch, features=features, labels=batch["label"], head=trainer.head, step=0)
    result = plain.reconstruct(batch["image"], features)
    assert "flipped_l1" not in result
    np.testing.assert_array_equal(plain.loss(context), result["l1"])

    symmetric = make_bypass(symmetry_weight=0.5)
    make_trainer(branches=[symmetric])
    for mine, theirs in zip(symmetric.cooperative_variables(), plain.cooperative_variables()):
        mine.assign(theirs)
    depth, albedo = np.asarray(result["depth"]), np.asarray(result["albedo"])
    assert not np.allclose(depth, depth[:, :, ::-1], atol=1e-4)  # the flip matters
    light = {key: result[key] for key in ("ambient", "diffuse", "l_dx", "l_dy")}
    flipped = render(np.ascontiguousarray(depth[:, :, ::-1]), np.ascontiguousarray(albedo[:, :, ::-1]), light,
                     result["angles"], result["translation"], plain.intrinsics, SMALL["march_steps"],
                     SMALL["refine_steps"])
    target = np.asarray(result["target"])
    flipped_l1 = np.abs(np.asarray(flipped["image"]) - target).mean(axis=(1, 2, 3))
    assert np.all(np.abs(flipped_l1 - np.asarray(result["l1"])) > 1e-4)
    np.testing.assert_allclose(symmetric.loss(context), np.asarray(result["l1"]) + 0.5 * flipped_l1, rtol=1e-5)
    with pytest.raises(ValueError, match="symmetry_weight must be >= 0"):
        make_bypass(symmetry_weight=-0.1)


def test_a_mirrored_face_with_mirrored_light_and_view_renders_the_mirrored_image():
    """The symmetry prior's premise: flip(render(d, a, l_dx, yaw, roll, t_x)) = render(flip d, flip a, -l_dx, -yaw,
    -roll, -t_x) (pitch, l_dy, t_y, t_z unchanged)."""
    rng = np.random.default_rng(2)
    rows, columns = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    bump = np.exp(-((columns - 0.3) ** 2 + (rows + 0.2) ** 2) / 0.2)
    depth = (1.0 - 0.05 * bump)[None].astype(np.float32)
    albedo = rng.uniform(0.2, 0.9, (1, 16, 16, 3)).astype(np.float32)
    light = {"ambient": np.array([0.3], np.float32), "diffuse": np.array([0.7], np.float32),
             "l_dx": np.array([0.5], np.float32), "l_dy": np.array([-0.3], np.float32)}
    angles, translation = np.array([[0.1, 0.2, 0.05]], np.float32), np.array([[0.01, -0.02, 0.0]], np.float32)
    K = intrinsics_from_fov(10.0, 16, 16)
    image = np.asarray(render(depth, albedo, light, angles, translation, K, march_steps=16)["image"])
    mirror = np.array([1.0, -1.0, -1.0], np.float32)
    mirrored = render(np.ascontiguousarray(depth[:, :, ::-1]), np.ascontiguousarray(albedo[:, :, ::-1]),
                      {**light, "l_dx": -light["l_dx"]}, angles * mirror, translation * np.array([-1.0, 1.0, 1.0],
                      np.float32), K, march_steps=16)
    np.testing.assert_allclose(np.asarray(mirrored["image"]), image[:, :, ::-1], atol=2e-3)


def test_depth_size_decodes_a_coarser_depth_resized_to_the_map():
    branch = make_bypass(map_size=16, depth_size=8)
    trainer = make_trainer(branches=[branch])
    batch = make_batch(size=2)
    assert branch.depth_net.output_shape == (None, 8, 8, 1)
    result = branch.reconstruct(batch["image"], trainer.backbone(batch["image"]))
    assert result["depth"].shape == (2, 16, 16) and result["albedo"].shape == (2, 16, 16, 3)
    depth = np.asarray(result["depth"])  # zero-initialised output: a flat start, its border columns behind
    np.testing.assert_allclose(depth[:, :, 2:-2], 1.0, atol=1e-6)
    np.testing.assert_allclose(depth[:, :, [0, 1, -2, -1]], 0.7 * 1.1 + 0.3 * 0.9, atol=1e-6)
    with pytest.raises(ValueError, match="depth_size 32 must not exceed map_size 16"):
        make_bypass(map_size=16, depth_size=32)
    with pytest.raises(ValueError, match="depth_size must be a power of two >= 8, got 12"):
        make_bypass(map_size=16, depth_size=12)


@pytest.mark.parametrize("name", ["bypass3d_curricularface", "bypass3d_synth", "bypass3d_synth_tiny", "bypass3d_yaleb"])
def test_configs_follow_the_three_stage_recipe(name):
    config = load_config(str(CONFIGS / f"{name}.yaml"))
    stages = config["train"]["stages"]
    assert [stage["name"] for stage in stages] == ["fr", "aux", "joint"]
    assert [stage["plugins"] for stage in stages] == [[], ["bypass3d"], ["bypass3d"]]
    assert stages[1]["freeze"] == ["backbone", "head"] and stages[1]["identity_loss"] is False
    assert config["optimizer"]["name"] == "sgd" and config["optimizer"]["momentum"] == 0.9
    (entry,) = config["branches"]
    assert entry["name"] == "bypass3d" and entry["optimizer"]["name"] == "adam" and entry["weight"] == 1.0
    assert config["data"]["flip"] is False or name == "bypass3d_curricularface"
    branch = Bypass3D(name="bypass3d", **entry["options"])  # every option is one the branch takes
    # Unsup3D's symmetry prior on SynthFaces and Yale B; the paper's recipe and the test config keep 3D-BERL's loss
    assert branch.symmetry_weight == (0.5 if name in ("bypass3d_synth", "bypass3d_yaleb") else 0.0)
