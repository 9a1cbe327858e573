"""APRN branch: D's structure, the Eq. 2 steps (what each one updates, by how much), Eq. 3 ablations, the update
frequency, MirroredStrategy equivalence, l_mean (symmetry yaw, frontal mean, JSON) and bad input."""
import json

import numpy as np
import pytest
import keras
import tensorflow as tf

from tfface import backbones, heads
from tfface.branches import BRANCHES
from tfface.branches.aprn import AdversarialPoseRegression, five_points_tensor, l1_distance
from tfface.branches.mean_landmarks import (
    frontal_mean_landmarks,
    load_mean_landmarks,
    save_mean_landmarks,
    symmetry_yaw,
)
from tfface.branches.pose_discriminator import STAGE_CHANNELS, PoseDiscriminator, default_channels
from tfface.data.landmarks import GENERIC_FACE_5_POINTS_MM, estimate_pose, five_from_68, rotation_matrix
from tfface.data.pipeline import LANDMARK_FLIP_PERMUTATIONS
from tfface.training import FaceTrainer
from tfface.training.strategy import mirrored_strategy

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 4
NUM_LANDMARKS = 5
MEAN_LANDMARKS = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)
ALPHA = 0.2
LEARNING_RATE = 0.1


def make_batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(size, *INPUT_SHAPE)).astype("float32"),
        "label": (np.arange(size) % NUM_CLASSES).astype("int32"),
        "landmarks": rng.uniform(0.2, 0.8, size=(size, NUM_LANDMARKS, 2)).astype("float32"),
    }


def make_branch(objective="adversarial", stage="stage2", sync_batchnorm=False, **options):
    return AdversarialPoseRegression(
        mean_landmarks=MEAN_LANDMARKS.tolist(), stage=stage, objective=objective, channels=[6, 5],
        sync_batchnorm=sync_batchnorm, weight=ALPHA, optimizer=keras.optimizers.SGD(LEARNING_RATE), **options,
    )


def make_trainer(branch, sync_batchnorm=False):
    backbone = backbones.get_backbone(
        "tiny", input_shape=INPUT_SHAPE, embedding_size=6, width=4, sync_batchnorm=sync_batchnorm
    )
    trainer = FaceTrainer(backbone, heads.get_head("softmax", NUM_CLASSES), branches=[branch])
    trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    trainer.build_all(INPUT_SHAPE)
    return trainer


def one_step(trainer, batch):
    return trainer.train_on_batch(dict(batch), return_dict=True)


def values(variables):
    return [variable.numpy().copy() for variable in variables]


def assert_unchanged(variables, before):
    for variable, old in zip(variables, before):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def sgd_update(variables, loss_fn):
    """What one plain SGD step of rate LEARNING_RATE on loss_fn() gives, computed independently of the trainer."""
    with tf.GradientTape() as tape:
        loss = loss_fn()
    gradients = tape.gradient(loss, variables)
    return [
        variable.numpy() - LEARNING_RATE * (0.0 if gradient is None else gradient.numpy())
        for variable, gradient in zip(variables, gradients)
    ]


# ------------------------------------------------------------------------------------------------ D and the loss
def test_discriminator_follows_table_1_and_outputs_landmarks():
    assert default_channels("stem") == (256, 512, 1024, 2048)
    assert default_channels("stage4") == (2048,)
    assert default_channels("stage1", width_multiplier=1 / 64) == (8, 16, 32)
    discriminator = PoseDiscriminator(num_landmarks=5, channels=(4, 6), strides=2)
    out = discriminator(np.zeros((3, 7, 7, 2), np.float32), training=False)
    assert out.shape == (3, 5, 2) and out.dtype == tf.float32
    convs = [layer for layer in discriminator.blocks if isinstance(layer, keras.layers.Conv2D)]
    assert [(conv.filters, conv.kernel_size, conv.strides) for conv in convs] == [(4, (3, 3), (2, 2)), (6, (3, 3), (2, 2))]
    # 7x7 -> conv s2 4x4 -> conv s2 2x2 -> max-pool 3x3 s2 1x1 -> FC(10) over 6 channels.
    assert discriminator.fc.kernel.shape == (6, 10)
    assert set(STAGE_CHANNELS) == {"stem", "stage1", "stage2", "stage3", "stage4"}


def layer_list(discriminator):
    """D's layers in order: ("conv", (filters, kernel, stride)), ("bn", None), ("relu", None), ("maxpool", (size,
    stride)), ("fc", units); the Flatten before the FC is not listed."""
    listed = []
    for layer in discriminator.blocks:
        if isinstance(layer, keras.layers.Conv2D):
            listed.append(("conv", (layer.filters, layer.kernel_size[0], layer.strides[0])))
        else:
            listed.append(({keras.layers.BatchNormalization: "bn", keras.layers.ReLU: "relu"}[type(layer)], None))
    if discriminator.pool is not None:
        listed.append(("maxpool", (discriminator.pool.pool_size[0], discriminator.pool.strides[0])))
    return listed + [("fc", discriminator.fc.units)]


def built_discriminator(stage_shape, stage="stage4", **options):
    """An APRN branch (M = 5) built on a backbone whose `stage` map has shape `stage_shape`: its D."""
    branch = AdversarialPoseRegression(
        mean_landmarks=MEAN_LANDMARKS.tolist(), stage=stage, optimizer=keras.optimizers.SGD(0.1), **options
    )
    branch.build_for({stage: stage_shape, "embedding": (6,)}, None)
    return branch.discriminator


def test_discriminator_layers_follow_table_1_for_the_resnet_and_table_4_for_casia_net():
    """Paper 000, Table 1 (ResNet-101/152): "Conv/BN/Relu 3x3, stride 2 | Maxpool 3*3 stride 2 | FC 2*M", the stem's
    widths [256, 512, 1024, 2048], stage4's [2048]. Table 4 ("Structure of the pose discriminator for CASIA-Net"):
    inputs "The last convolutional layer", "Conv+BN+Relu 3x3x320, stride 1" three times, "Fully Connected (FC) Layer
    M x 2", no pooling.

    The layer lists are compared with the tables transcribed by hand, and Table 4's D on CASIA-Net's 6x6x320 stage4
    (a narrow copy, width 3) against a numpy forward pass: three same-padded 3x3 convs of stride 1, batch norm on
    the batch statistics, ReLU, then the FC on all 6x6x3 values."""
    def block(width, stride):
        return [("conv", (width, 3, stride)), ("bn", None), ("relu", None)]

    table_1_stem = sum((block(width, 2) for width in (256, 512, 1024, 2048)), []) + [("maxpool", (3, 2)), ("fc", 10)]
    assert layer_list(built_discriminator((7, 7, 8), stage="stem", width_multiplier=1.0)) == table_1_stem
    table_1_stage4 = block(2048, 2) + [("maxpool", (3, 2)), ("fc", 10)]
    assert layer_list(built_discriminator((7, 7, 8), table=1)) == table_1_stage4
    casia_stage4 = backbones.get_backbone("casianet").output["stage4"].shape[1:]
    assert tuple(casia_stage4) == (6, 6, 320)
    table_4 = block(320, 1) * 3 + [("fc", 10)]
    discriminator = built_discriminator(casia_stage4, table=4)
    assert layer_list(discriminator) == table_4
    assert discriminator.fc.kernel.shape == (6 * 6 * 320, 10)  # the FC reads the unpooled 6x6 map

    narrow = built_discriminator((6, 6, 2), table=4, width_multiplier=3 / 320)
    assert layer_list(narrow) == block(3, 1) * 3 + [("fc", 10)]
    features = np.random.default_rng(5).normal(size=(4, 6, 6, 2))
    x = features
    convs = [layer for layer in narrow.blocks if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in narrow.blocks if isinstance(layer, keras.layers.BatchNormalization)]
    for conv, norm in zip(convs, norms):
        kernel = conv.kernel.numpy().astype(np.float64)  # [3, 3, c_in, c_out]
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = sum(
            padded[:, dy : dy + 6, dx : dx + 6, :] @ kernel[dy, dx] for dy in range(3) for dx in range(3)
        )
        x = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + norm.epsilon)
        x = np.maximum(x, 0.0)
    expected = x.reshape(4, -1) @ narrow.fc.kernel.numpy() + narrow.fc.bias.numpy()
    predicted = narrow(features.astype(np.float32), training=True).numpy()
    np.testing.assert_allclose(predicted, expected.reshape(4, 5, 2), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="aprn: table must be 1 .* or 4"):
        built_discriminator((6, 6, 2), table=2)


def test_l1_distance_against_numpy():
    rng = np.random.default_rng(1)
    predicted, target = rng.normal(size=(4, 5, 2)), rng.normal(size=(1, 5, 2))
    expected = np.abs(predicted - target).sum(axis=(1, 2))
    np.testing.assert_allclose(l1_distance(predicted, target).numpy(), expected, rtol=1e-6)


def test_five_points_of_68_point_data_and_mean():
    rng = np.random.default_rng(2)
    landmarks68 = rng.uniform(0.1, 0.9, size=(8, 68, 2)).astype(np.float32)
    np.testing.assert_allclose(five_points_tensor(landmarks68).numpy(), five_from_68(landmarks68), atol=1e-6)
    mean68 = rng.uniform(0.1, 0.9, size=(68, 2))
    branch = AdversarialPoseRegression(
        mean_landmarks=mean68.tolist(), stage="stage2", channels=[4], five_points=True,
        optimizer=keras.optimizers.SGD(0.0),
    )
    trainer = make_trainer(branch)
    np.testing.assert_allclose(branch.mean_landmarks.numpy(), five_from_68(mean68), atol=1e-6)
    batch = {**make_batch(), "landmarks": landmarks68}
    features = trainer.backbone(batch["image"], training=True)["stage2"]
    predicted = branch.discriminator(features, training=True).numpy()
    logs = one_step(trainer, batch)
    expected = np.abs(predicted - five_from_68(landmarks68)).sum(axis=(1, 2)).mean()
    np.testing.assert_allclose(logs["aprn_adversary_loss"], expected, rtol=1e-5)


def test_registered_with_paper_defaults():
    branch = BRANCHES.build("aprn", mean_landmarks=MEAN_LANDMARKS.tolist(), optimizer=keras.optimizers.SGD(0.01))
    assert branch.stage == "stage4" and branch.objective == "adversarial" and branch.has_adversary
    assert float(branch.loss_weight(0)) == pytest.approx(0.2)
    assert branch.channels == (2048,) and branch.update_every == 1


# ------------------------------------------------------------------------------------------------ Eq. 2 steps
def test_d_step_updates_only_d_by_the_gradient_of_the_landmark_l1():
    branch = make_branch()
    trainer = make_trainer(branch)
    trainer.optimizer.learning_rate.assign(0.0)  # the main phase moves nothing: what changes is the D step's
    batch = make_batch()
    discriminator = branch.discriminator.trainable_variables
    backbone_before, head_before = values(trainer.backbone.trainable_variables), values(trainer.head.trainable_variables)
    features = trainer.backbone(batch["image"], training=True)["stage2"]
    predicted = branch.discriminator(features, training=True).numpy()
    expected_loss = np.abs(predicted - batch["landmarks"]).sum(axis=(1, 2)).mean()
    discriminator_before = values(discriminator)
    expected_discriminator = sgd_update(
        discriminator,
        lambda: tf.reduce_mean(l1_distance(branch.discriminator(features, training=True), batch["landmarks"])),
    )

    logs = one_step(trainer, batch)
    np.testing.assert_allclose(logs["aprn_adversary_loss"], expected_loss, rtol=1e-5)
    for variable, expected in zip(discriminator, expected_discriminator):
        np.testing.assert_allclose(variable.numpy(), expected, atol=1e-6, err_msg=variable.path)
    assert all(not np.array_equal(v.numpy(), old) for v, old in zip(discriminator, discriminator_before))
    assert_unchanged(trainer.backbone.trainable_variables, backbone_before)
    assert_unchanged(trainer.head.trainable_variables, head_before)


def test_r_prime_step_updates_only_the_backbone_up_to_the_stage_towards_the_mean_face():
    branch = make_branch(stage="stage2")
    trainer = make_trainer(branch)
    branch.optimizer.learning_rate.assign(0.0)  # D frozen
    trainer.set_stage(identity_loss=False)  # so that the only gradient is the R' step's
    batch = make_batch()
    backbone = trainer.backbone.trainable_variables
    discriminator_before = values(branch.discriminator.trainable_variables)
    head_before = values(trainer.head.trainable_variables)
    predicted = branch.discriminator(trainer.backbone(batch["image"], training=True)["stage2"], training=True).numpy()
    expected_loss = np.abs(predicted - MEAN_LANDMARKS[None]).sum(axis=(1, 2)).mean()

    def r_prime_loss():
        features = trainer.backbone(batch["image"], training=True)["stage2"]
        return ALPHA * tf.reduce_mean(l1_distance(branch.discriminator(features, training=True), MEAN_LANDMARKS[None]))

    expected_backbone = sgd_update(backbone, r_prime_loss)
    backbone_before = values(backbone)
    logs = one_step(trainer, batch)

    np.testing.assert_allclose(logs["aprn_loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], ALPHA * expected_loss, rtol=1e-5)
    for variable, expected in zip(backbone, expected_backbone):
        np.testing.assert_allclose(variable.numpy(), expected, atol=1e-6, err_msg=variable.path)
    assert_unchanged(branch.discriminator.trainable_variables, discriminator_before)
    assert_unchanged(trainer.head.trainable_variables, head_before)
    moved = {
        v.path.split("_")[0] for v, old in zip(backbone, backbone_before) if not np.array_equal(v.numpy(), old)
    }
    assert moved == {"stem", "stage1", "stage2"}  # R' is the backbone up to D's stage; stage3.. and the FC stay


def test_update_every_skips_the_r_prime_step_off_the_grid():
    branch = make_branch(update_every=2)
    trainer = make_trainer(branch)
    branch.optimizer.learning_rate.assign(0.0)
    trainer.set_stage(identity_loss=False)
    batch = make_batch()
    first = one_step(trainer, batch)  # step 0: on the grid
    before = values(trainer.backbone.trainable_variables)
    second = one_step(trainer, batch)  # step 1: skipped (plain SGD, no momentum: nothing moves)
    assert first["loss"] > 0 and second["loss"] == 0.0
    assert_unchanged(trainer.backbone.trainable_variables, before)
    one_step(trainer, batch)  # step 2: on the grid again
    assert any(not np.array_equal(v.numpy(), old) for v, old in zip(trainer.backbone.trainable_variables, before))


@pytest.mark.parametrize("objective, target", [("part1", "landmarks"), ("part2", "mean")])
def test_eq3_ablations_train_d_and_the_backbone_jointly_without_adversary(objective, target):
    branch = make_branch(objective=objective)
    assert not branch.has_adversary
    trainer = make_trainer(branch)
    trainer.set_stage(identity_loss=False)
    batch = make_batch()
    goal = batch["landmarks"] if target == "landmarks" else MEAN_LANDMARKS[None]
    features = trainer.backbone(batch["image"], training=True)["stage2"]
    expected_loss = np.abs(branch.discriminator(features, training=True).numpy() - goal).sum(axis=(1, 2)).mean()

    def joint_loss():
        stage = trainer.backbone(batch["image"], training=True)["stage2"]
        return ALPHA * tf.reduce_mean(l1_distance(branch.discriminator(stage, training=True), goal))

    variables = trainer.backbone.trainable_variables + branch.discriminator.trainable_variables
    expected = sgd_update(variables, joint_loss)
    logs = one_step(trainer, batch)
    assert "aprn_adversary_loss" not in logs
    np.testing.assert_allclose(logs["aprn_loss"], expected_loss, rtol=1e-5)
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, atol=1e-6, err_msg=variable.path)


def test_mirrored_step_equals_single_device_step():
    """D step and R' step together, two replicas on a global batch of 8 vs one device (sync BN everywhere)."""
    batch = make_batch()
    single = make_trainer(make_branch(sync_batchnorm=True), sync_batchnorm=True)
    initial = single.get_weights()
    one_step(single, batch)

    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = make_trainer(make_branch(sync_batchnorm=True), sync_batchnorm=True)
        mirrored.set_weights(initial)
    mirrored.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
    for mine, theirs in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


# ------------------------------------------------------------------------------------------------ l_mean
def project(yaw, roll=0.0, pitch=0.0, scale=0.01, offset=(0.5, 0.45)):
    """The generic 5-point face turned by (yaw, pitch, roll), weak perspective, as (x / w, y / h) of a square image."""
    rotated = GENERIC_FACE_5_POINTS_MM @ rotation_matrix(yaw, pitch, roll).T
    return scale * rotated[:, :2] + np.asarray(offset)


def test_symmetry_yaw_by_hand_and_on_turned_generic_faces():
    # eyes (0, 0) and (2, 0), nose 0.5 right of their mid-point: yaw = atan(31.5 * 0.5 / (35 * 1)).
    hand = np.array([[0.0, 0.0], [2.0, 0.0], [1.5, 1.0], [0.2, 2.0], [1.8, 2.0]])
    assert symmetry_yaw(hand) == pytest.approx(np.degrees(np.arctan(31.5 * 0.5 / 35.0)))
    for yaw in (0.0, 10.0, -25.0, 60.0):
        assert symmetry_yaw(project(yaw, roll=20.0)) == pytest.approx(yaw, abs=1e-6)
    # non-square images: x / w stretched back by the aspect ratio
    stretched = project(30.0) * np.array([0.5, 1.0])
    assert symmetry_yaw(stretched, aspect=2.0) == pytest.approx(30.0, abs=1e-6)
    faces = np.stack([project(0.0), project(40.0)])
    np.testing.assert_allclose(symmetry_yaw(faces), [0.0, 40.0], atol=1e-6)


def test_frontal_mean_landmarks_by_hand():
    landmarks = np.array([[[0.0, 0.0], [1.0, 1.0]], [[2.0, 4.0], [3.0, 5.0]], [[9.0, 9.0], [9.0, 9.0]]])
    yaw = np.array([-10.0, 5.0, 40.0])
    np.testing.assert_allclose(
        frontal_mean_landmarks(landmarks, yaw, max_yaw=15.0), [[1.0, 2.0], [2.0, 3.0]]
    )
    with pytest.raises(ValueError, match=r"no frontal face.*\|yaw\| <= 1"):
        frontal_mean_landmarks(landmarks, yaw, max_yaw=1.0)
    with pytest.raises(ValueError, match=r"yaw must be \[3\]"):
        frontal_mean_landmarks(landmarks, yaw[:2], max_yaw=15.0)


def mirror(landmarks):
    """Normalised 68-point landmarks [68, 2] of the mirrored image: x -> 1 - x, left and right swapped."""
    return np.stack([1.0 - landmarks[:, 0], landmarks[:, 1]], axis=-1)[list(LANDMARK_FLIP_PERMUTATIONS[68])]


def test_symmetry_yaw_and_frontal_mean_on_real_faces(shared_data):
    """lm300w (68 points, 160x160 crops): symmetry yaw follows the weak-perspective pose fit, and the mean of the
    faces it calls frontal is left-right symmetric, unlike the mean of faces turned one way."""
    with open(shared_data / "lm300w" / "landmarks.csv") as handle:
        rows = [line.split(",")[1:] for line in handle.read().splitlines()[1:]]
    landmarks = np.array(rows, np.float64).reshape(-1, 68, 2) / 160.0
    yaw = symmetry_yaw(landmarks)
    sample = np.arange(0, len(landmarks), 8)
    fitted = np.array([estimate_pose(five_from_68(landmarks[index])).yaw for index in sample])
    assert np.corrcoef(yaw[sample], fitted)[0, 1] > 0.95
    assert np.abs(yaw[sample] - fitted).mean() < 5.0
    frontal = frontal_mean_landmarks(landmarks, yaw, max_yaw=10.0)
    turned = frontal_mean_landmarks(landmarks, np.where(yaw >= 30.0, 0.0, 90.0), max_yaw=10.0)
    assert np.abs(mirror(frontal) - frontal).mean() < 0.01 < 0.05 < np.abs(mirror(turned) - turned).mean()


def test_mean_landmarks_json_round_trip_and_the_branch_reads_it(tmp_path):
    path = tmp_path / "run" / "mean_landmarks.json"
    save_mean_landmarks(path, MEAN_LANDMARKS, max_yaw=15.0, num_frontal=3)
    record = json.loads(path.read_text())
    assert record["max_yaw"] == 15.0 and record["num_frontal"] == 3
    np.testing.assert_allclose(load_mean_landmarks(path), MEAN_LANDMARKS)
    branch = AdversarialPoseRegression(mean_landmarks=str(path), optimizer=keras.optimizers.SGD(0.1))
    trainer = make_trainer(branch)
    np.testing.assert_allclose(branch.mean_landmarks.numpy(), MEAN_LANDMARKS)
    assert any("mean_landmarks" in weight.path for weight in trainer.weights)  # checkpointed with the run


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "options, message",
    [
        ({"stage": "stage9"}, "aprn: unknown stage 'stage9'; available: stem, stage1"),
        ({"objective": "part3"}, "aprn: unknown objective 'part3'; available: adversarial, part1, part2"),
        ({"optimizer": None}, "aprn: the adversarial objective trains D with its own optimizer"),
        ({"mean_landmarks": None}, "aprn: objective 'adversarial' needs mean_landmarks"),
        ({"mean_landmarks": "/nowhere/mean.json"}, "mean_landmarks: file not found: /nowhere/mean.json"),
        ({"mean_landmarks": [[0.5, 0.5, 0.5]]}, r"must be \[M, 2\], got \[1, 3\]"),
        ({"update_every": 0}, "update_every must be an integer >= 1, got 0"),
        ({"num_landmarks": 68}, "num_landmarks 68 does not match the 5 mean landmarks"),
    ],
)
def test_bad_options_raise_clear_errors(options, message):
    arguments = {"mean_landmarks": MEAN_LANDMARKS.tolist(), "optimizer": keras.optimizers.SGD(0.1), **options}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        AdversarialPoseRegression(**arguments)


def test_batches_without_or_with_other_landmarks_are_named():
    trainer = make_trainer(make_branch())
    batch = make_batch()
    with pytest.raises(ValueError, match="aprn: the batch has no 'landmarks'; add landmarks to data.features"):
        one_step(trainer, {key: batch[key] for key in ("image", "label")})
    trainer = make_trainer(make_branch())
    with pytest.raises(ValueError, match="aprn: the data has 68 landmarks per face, the branch 5"):
        one_step(trainer, {**batch, "landmarks": np.zeros((8, 68, 2), np.float32)})
