"""APRN around the branch: l_mean from data (experiments.aprn.mean_landmarks), the probes (experiments.aprn.probes,
experiments.aprn.probe_landmarks, experiments.aprn.probe_pose), the aprn_* configs, fine-tuning from a baseline run and the export."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import keras
import tensorflow as tf
import yaml
from PIL import Image

from tfface.runs import load_backbone
from tfface.data.landmarks import GENERIC_FACE_5_POINTS_MM, rotation_matrix
from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from experiments.aprn import probes as pose_probes
from tfface.export import export_run
from tfface.builder import build_trainer
from tfface.training.config import BackboneConfig, load_config
from experiments.aprn import compare as aprn_compare
from experiments.aprn import mean_landmarks as mean_landmarks_tool
from experiments.aprn import probe_landmarks, probe_pose
from trainers.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
SIZE = 24
CROP = 20
IDENTITIES = 6
PER_IDENTITY = 10


def face_landmarks(yaw: float) -> np.ndarray:
    """The generic 5-point face turned by yaw, in pixels of a SIZE x SIZE image (weak perspective)."""
    rotated = GENERIC_FACE_5_POINTS_MM @ rotation_matrix(yaw, 0.0, 0.0).T
    return 0.13 * rotated[:, :2] + np.array([SIZE / 2, SIZE / 2 - 4])


def draw(label: int, landmarks: np.ndarray, rng) -> np.ndarray:
    image = rng.integers(0, 40, size=(SIZE, SIZE, 3)).astype(np.uint8)
    image[2:6, 2 + 3 * label : 5 + 3 * label] = 250  # the identity
    for x, y in landmarks:
        image[int(y), int(x)] = (255, 200, 0)  # the pose
    return image


@pytest.fixture(scope="module")
def pose_data(tmp_path_factory):
    """6 identities x 10 faces of 24x24 with yaws in [-60, 60], exact landmarks and poses; returns (dir, records)."""
    out = tmp_path_factory.mktemp("pose_data")
    rng = np.random.default_rng(0)
    records = []
    with ShardedTFRecordWriter(out, prefix="train", examples_per_shard=30) as writer:
        for label in range(IDENTITIES):
            for yaw in np.linspace(-60.0, 60.0, PER_IDENTITY) + rng.uniform(-3, 3, PER_IDENTITY):
                landmarks = face_landmarks(yaw)
                writer.write(make_example(draw(label, landmarks, rng), label, landmarks=landmarks,
                                          pose=[yaw, 0.0, 0.0]))
                records.append((label, yaw, landmarks))
    return out, records


# ------------------------------------------------------------------------------------------------ l_mean
@pytest.mark.parametrize("yaw_from", ["pose", "symmetry"])
def test_mean_landmarks_tool_averages_the_frontal_faces_in_network_input_coordinates(tmp_path, pose_data, yaw_from):
    data_dir, records = pose_data
    offset = (SIZE - CROP) // 2  # the evaluation centre crop
    frontal = [(landmarks - offset) / CROP for _, yaw, landmarks in records if abs(yaw) <= 20.0]
    out = tmp_path / "mean.json"
    code = mean_landmarks_tool.main([
        "--data", str(data_dir), "--crop-size", str(CROP), str(CROP), "--max-yaw", "20", "--yaw-from", yaw_from,
        "--out", str(out),
    ])
    assert code == 0
    record = json.loads(out.read_text())
    np.testing.assert_allclose(record["mean_landmarks"], np.mean(frontal, axis=0), atol=1e-5)
    assert record["num_frontal"] == len(frontal) and record["num_faces"] == len(records)
    assert record["yaw_from"] == yaw_from and record["crop_size"] == [CROP, CROP]


def test_mean_landmarks_tool_reads_data_and_output_from_a_config(tmp_path, pose_data, capsys):
    data_dir, _ = pose_data
    out = tmp_path / "run" / "mean_landmarks.json"
    config = tmp_path / "aprn.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(data_dir), "crop_size": [CROP, CROP], "features": ["landmarks"]},
        "branches": [{"name": "aprn", "options": {"mean_landmarks": str(out)}}],
    }))
    assert mean_landmarks_tool.main(["--config", str(config)]) == 0
    assert json.loads(out.read_text())["data"] == str(data_dir)
    assert mean_landmarks_tool.main(["--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert mean_landmarks_tool.main(["--data", str(data_dir), "--max-yaw", "0.01", "--out", str(out)]) == 2
    assert "no frontal face" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ probes
def test_pose_classes_and_identity_split_by_hand():
    np.testing.assert_array_equal(
        pose_probes.pose_classes([-70.0, -10.0, 0.0, 30.0, 45.0, 15.0], 15.0, 45.0), [1, 0, 0, -1, 1, 0]
    )
    labels = np.repeat(np.arange(10), 3)
    held_out = pose_probes.split_by_identity(labels, 0.3, seed=1)
    assert len(np.unique(labels[held_out])) == 3
    assert not set(labels[held_out]) & set(labels[~held_out])
    with pytest.raises(ValueError, match="holdout must be in"):
        pose_probes.split_by_identity(labels, 1.0)


def test_faces_with_negative_yaw_are_mirrored():
    images = np.arange(2 * 2 * 3 * 1, dtype=np.float32).reshape(2, 2, 3, 1)
    faces = pose_probes.ProbeSet(images, np.array([0, 1]), None, np.array([-30.0, 30.0]), "pose")
    mirrored = faces.images_facing_one_side()
    np.testing.assert_array_equal(mirrored[0], images[0][:, ::-1])
    np.testing.assert_array_equal(mirrored[1], images[1])


def test_pose_probe_separates_pose_coded_embeddings_and_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    classes = np.tile([0, 1, 0, -1], 100)
    labels = np.repeat(np.arange(40), 10)
    held_out = pose_probes.split_by_identity(labels, 0.3)
    directions = np.eye(8)[np.where(classes == 1, 0, 1)]  # profile faces along e0, the others along e1
    coded = rng.normal(scale=0.3, size=(400, 8)) + 3.0 * directions
    result = pose_probes.pose_probe(coded, classes, held_out)
    assert result["val_accuracy"] == 1.0 and result["train_accuracy"] == 1.0
    assert result["num_test"] % 2 == 0 and result["num_test"] + result["num_train"] == 2 * 100  # balanced
    noise = pose_probes.pose_probe(rng.normal(size=(400, 8)), classes, held_out)
    assert 0.3 < noise["val_accuracy"] < 0.7


def test_cross_pose_pairs_pair_a_frontal_with_a_profile_face():
    labels = np.repeat(np.arange(4), 4)
    classes = np.tile([0, 1, -1, 1], 4)
    first, second, issame = pose_probes.cross_pose_pairs(labels, classes, num_pairs=20, seed=0)
    assert np.all(classes[first] == 0) and np.all(classes[second] == 1)
    np.testing.assert_array_equal(labels[first] == labels[second], issame)
    assert issame.sum() == 10


def fake_backbone(size=8):
    """stem: the 10 landmark coordinates the image holds in its first rows, each a constant 4x4 channel;
    stage1..stage4: zeros (no information)."""
    image = keras.Input((size, size, 3), name="image")

    def coordinate_maps(x):
        coordinates = keras.ops.concatenate([x[:, 0, :, 0], x[:, 1, : 10 - size, 0]], axis=1)
        return keras.ops.tile(coordinates[:, None, None, :], (1, 4, 4, 1))

    stem = keras.layers.Lambda(coordinate_maps, name="stem")(image)
    outputs = {"stem": stem}
    for index in range(1, 5):
        outputs[f"stage{index}"] = keras.layers.Lambda(lambda x: 0.0 * x, name=f"stage{index}")(stem)
    outputs["embedding"] = keras.layers.GlobalAveragePooling2D(name="embedding")(stem)
    return keras.Model(image, outputs)


def landmark_faces(count, seed, size=8):
    rng = np.random.default_rng(seed)
    landmarks = rng.uniform(0.2, 0.8, size=(count, 5, 2)).astype(np.float32)
    images = rng.normal(scale=0.1, size=(count, size, size, 3)).astype(np.float32)
    images[:, 0, :, :] = np.repeat(landmarks.reshape(count, 10)[:, :size, None], 3, axis=2)
    images[:, 1, :2, :] = landmarks.reshape(count, 10)[:, size:, None]
    return pose_probes.ProbeSet(images, np.zeros(count, int), landmarks, None, None)


def test_landmark_probe_finds_landmarks_where_the_features_hold_them():
    keras.utils.set_random_seed(0)
    train, test = landmark_faces(512, seed=1), landmark_faces(64, seed=2)
    results = pose_probes.landmark_probe(
        fake_backbone(), train, test, stages=("stem", "stage4"), width_multiplier=1 / 32, epochs=25, batch_size=32,
        learning_rate=3e-3,
    )
    # zero features: the probe can only output a constant, no better than the per-coordinate median
    best_constant = np.abs(test.landmarks - np.median(train.landmarks, axis=0)).sum(axis=(1, 2)).mean()
    assert results["stage4"]["l1"] >= 0.95 * best_constant
    np.testing.assert_allclose(results["stage4"]["relative_l1"], results["stage4"]["l1"] / best_constant, rtol=1e-5)
    assert results["stage4"]["relative_l1"] == pytest.approx(1.0, abs=0.02)  # started at the median, learnt nothing
    assert results["stem"]["relative_l1"] < 0.65
    np.testing.assert_allclose(results["stem"]["pixel_error"], results["stem"]["l1"] / 10 * 8, rtol=1e-5)



def test_a_stage_probed_alone_gives_what_it_gives_among_others():
    train, test = landmark_faces(64, seed=1), landmark_faces(32, seed=2)
    options = dict(width_multiplier=1 / 32, epochs=2, batch_size=32, learning_rate=3e-3, seed=4)
    alone = pose_probes.landmark_probe(fake_backbone(), train, test, stages=("stem",), **options)
    among = pose_probes.landmark_probe(fake_backbone(), train, test, stages=("stage4", "stem"), **options)
    assert alone["stem"] == pytest.approx(among["stem"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ runs
def run_config(tmp_path, data_dir, name, **sections):
    config = {
        "name": name,
        "work_dir": str(tmp_path / name),
        "backbone": {"name": "tiny", "options": {"embedding_size": 8, "width": 8}},
        "head": {"name": "softmax"},
        "data": {"train": str(data_dir), "crop_size": [CROP, CROP], "shuffle_buffer": 64},
        "train": {"epochs": 1, "batch_size": 12, "verbose": 2, "strategy": "default"},
        "schedule": {"name": "constant", "learning_rate": 0.05},
        **sections,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pose_data):
    """A baseline run and an APRN run fine-tuned from it at a tenth of its learning rate."""
    tmp_path = tmp_path_factory.mktemp("runs")
    data_dir, _ = pose_data
    assert train_main(["--config", run_config(tmp_path, data_dir, "baseline")]) == 0
    mean_path = tmp_path / "aprn" / "mean_landmarks.json"
    aprn = run_config(
        tmp_path, data_dir, "aprn",
        data={"train": str(data_dir), "crop_size": [CROP, CROP], "shuffle_buffer": 64, "features": ["landmarks"]},
        train={"epochs": 1, "batch_size": 12, "verbose": 2, "strategy": "default",
               "init_from": str(tmp_path / "baseline")},
        schedule={"name": "constant", "learning_rate": 0.005},
        branches=[{"name": "aprn", "weight": 0.2, "optimizer": {"name": "sgd", "learning_rate": 0.01},
                   "options": {"mean_landmarks": str(mean_path), "channels": [8]}}],
    )
    assert mean_landmarks_tool.main(["--config", aprn, "--max-yaw", "20"]) == 0
    assert train_main(["--config", aprn]) == 0
    return tmp_path / "baseline", tmp_path / "aprn"


def test_aprn_fine_tunes_from_the_baseline_and_logs_both_steps(runs):
    _, aprn = runs
    history = (aprn / "history.csv").read_text().splitlines()
    assert "aprn_adversary_loss" in history[0] and "aprn_loss" in history[0]
    checkpoint = next((aprn / "checkpoints").iterdir())
    with h5py.File(checkpoint) as weights:
        names = []
        weights.visit(names.append)
    assert "branches/adversarial_pose_regression/discriminator/fc/vars/0" in names  # D is checkpointed with the run


def test_export_holds_no_discriminator_variables(runs, tmp_path):
    _, aprn = runs
    exported = export_run(aprn, tmp_path / "models" / "aprn" / "1")
    reader = tf.train.load_checkpoint(str(exported / "variables" / "variables"))
    stored = [reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if "VARIABLE_VALUE" in key]
    backbone = load_backbone(aprn)

    def canonical(arrays):
        return sorted((array.shape, array.tobytes()) for array in arrays)

    assert canonical(stored) == canonical(variable.numpy() for variable in backbone.variables)
    with h5py.File(next((aprn / "checkpoints").iterdir())) as checkpoint:
        fc_kernel = checkpoint["branches/adversarial_pose_regression/discriminator/fc/vars/0"][()]
    assert not any(array.shape == fc_kernel.shape and np.array_equal(array, fc_kernel) for array in stored)


def test_probe_tools_report_every_stage_and_the_svm(runs, pose_data, tmp_path, capsys):
    data_dir, _ = pose_data
    baseline, _ = runs
    out = tmp_path / "landmarks.json"
    assert probe_landmarks.main([str(baseline), "--data", str(data_dir), "--prefix", "train", "--epochs", "2",
                                 "--width-multiplier", "0.004", "--out", str(out)]) == 0
    stages = json.loads(out.read_text())["stages"]
    assert list(stages) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert all(np.isfinite(numbers["l1"]) and numbers["l1"] > 0 for numbers in stages.values())
    out = tmp_path / "pose.json"
    assert probe_pose.main([str(baseline), "--data", str(data_dir), "--prefix", "train", "--holdout", "0.5",
                            "--pairs", "40", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["val_accuracy"] <= 1.0 and 0.0 <= result["cross_pose_accuracy"] <= 1.0
    assert "linear SVM frontal" in capsys.readouterr().out
    assert probe_pose.main([str(tmp_path / "no_run"), "--data", str(data_dir)]) == 2


def write_pairs_folder(root: Path) -> Path:
    """LFW layout: 4 identities x 2 faces at random yaws, pairs.txt of 2 folds x (2 matched + 2 mismatched)."""
    rng = np.random.default_rng(3)
    for label in range(4):
        (root / f"id{label}").mkdir(parents=True)
        for number in (1, 2):
            image = draw(label, face_landmarks(rng.uniform(-60, 60)), rng)
            Image.fromarray(image).save(root / f"id{label}" / f"id{label}_{number:04d}.png")
    lines = ["2 2"]
    for fold in range(2):
        lines += [f"id{2 * fold} 1 2", f"id{2 * fold + 1} 1 2"]
        lines += [f"id{2 * fold} 1 id{2 * fold + 1} 2", f"id{2 * fold + 1} 1 id{(2 * fold + 2) % 4} 1"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_aprn_compare_tabulates_the_runs_on_one_split(runs, pose_data, tmp_path, capsys):
    data_dir, _ = pose_data
    baseline, aprn = runs
    out = tmp_path / "compare.json"
    assert aprn_compare.main([
        "--runs", f"baseline={baseline}", f"aprn={aprn}", "--data", str(data_dir), "--prefix", "train",
        "--fit-prefix", "train", "--epochs", "1", "--width-multiplier", "0.004", "--pairs", "40",
        "--pairs-dir", str(write_pairs_folder(tmp_path / "pairs")), "--out", str(out),
    ]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | pose-probe SVM val (train) | stage4 landmark-probe L1 (relative) |")
    assert table[0].endswith("| frontal-profile verification | pairs.txt verification |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| baseline", "| aprn"]
    results = json.loads(out.read_text())["results"]
    assert results["baseline"]["pose_probe"]["num_test"] == results["aprn"]["pose_probe"]["num_test"]
    assert 0.0 <= results["aprn"]["pairs_dir"]["accuracy_mean"] <= 1.0
    assert aprn_compare.main(["--runs", "baseline", "--data", str(data_dir)]) == 2
    assert "NAME=WORK_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["aprn_softmax", "aprn_arcface", "aprn_softmax_part1", "aprn_softmax_part2"])
def test_aprn_configs_build_and_step(name, pose_data, runs, tmp_path):
    data_dir, _ = pose_data
    _, aprn = runs
    config = load_config(str(REPO / "experiments" / "aprn" / "configs" / f"{name}.yaml"))
    assert config["train"]["init_from"] and config["schedule"]["learning_rate"] == pytest.approx(0.01)
    branch = config["branches"][0]
    assert branch["name"] == "aprn" and branch["weight"] == 0.2
    branch["options"].update(mean_landmarks=str(aprn / "mean_landmarks.json"), channels=[8])
    config.backbone = BackboneConfig(name="tiny", options={"embedding_size": 8})
    trainer = build_trainer(config, num_classes=IDENTITIES, steps_per_epoch=1, input_shape=(CROP, CROP, 3))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(4, CROP, CROP, 3)).astype(np.float32),
        "label": np.arange(4, dtype=np.int32),
        "landmarks": rng.uniform(0.2, 0.8, size=(4, 5, 2)).astype(np.float32),
    }
    logs = trainer.train_on_batch(batch, return_dict=True)
    assert np.isfinite(logs["aprn_loss"])
    assert ("aprn_adversary_loss" in logs) == (branch["options"].get("objective", "adversarial") == "adversarial")
