"""SynthFaces: determinism, identity splits, label noise, landmarks, LFW pairs, long tail, CLI and data set files."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfface.data import image_io, schema
from tfface.data import synth
from tfface.data.writer import read_description
from tfface.evaluation.readers import read_lfw_pairs
from benchmarks import bench_synth
from tools import synth as synth_tool

SIZE = 32
BATCH = 16  # one batch shape for every test, so the renderer compiles once
OPTIONS = synth.SynthOptions(image_size=SIZE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synth.generate(out, identities=6, images_per_identity=4, seed=3, test_identities=4,
                             test_images_per_identity=3, label_noise=0.25, options=OPTIONS, folds=10,
                             pairs_per_fold=300, batch_size=BATCH, examples_per_shard=10, progress=False)
    return out, summary


def _read_examples(out, prefix):
    description = read_description(out, prefix)
    records = tf.data.TFRecordDataset([str(out / shard) for shard in description["shards"]])
    return description, [schema.parse_example(record) for record in records]


def test_rendering_is_deterministic_per_seed_and_independent_of_batching():
    renderer = synth.SynthFaceRenderer(OPTIONS, BATCH)
    first = renderer.render(5, [0, 1, 2], [0, 0, 1])
    again = synth.SynthFaceRenderer(OPTIONS, BATCH).render(5, [2, 7, 1], [1, 0, 0])
    for key in first:
        np.testing.assert_array_equal(first[key][2], again[key][0])
        np.testing.assert_array_equal(first[key][1], again[key][2])
    other_seed = renderer.render(6, [0], [0])
    assert np.abs(other_seed["image"][0].astype(int) - first["image"][0]).mean() > 5


def test_generated_files_are_deterministic(dataset, tmp_path):
    out, summary = dataset
    again = synth.generate(tmp_path, identities=6, images_per_identity=4, seed=3, test_identities=4,
                           test_images_per_identity=3, label_noise=0.25, options=OPTIONS, batch_size=BATCH,
                           examples_per_shard=10, progress=False)
    assert again["train"] == summary["train"]
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "synth.json":  # synth.json holds timings
            assert (tmp_path / path.relative_to(out)).read_bytes() == path.read_bytes(), path.name


def test_train_and_test_identities_are_disjoint(dataset):
    out, summary = dataset
    train_description, train = _read_examples(out, "train")
    test_description, test = _read_examples(out, "test")
    train_names = set(train_description["class_names"])
    test_names = set(test_description["class_names"])
    assert train_names == {synth.identity_name(i) for i in range(6)}
    assert test_names == {synth.identity_name(i) for i in range(6, 10)}
    assert test_names == {path.name for path in (out / "test").iterdir() if path.is_dir()}
    train_sources = {example["source_id"].numpy().decode().split("/")[0] for example in train}
    test_sources = {example["source_id"].numpy().decode().split("/")[0] for example in test}
    assert train_sources <= train_names and test_sources == test_names
    assert len(train) == summary["train"]["images"] == 24 and len(test) == summary["test"]["images"] == 12
    # test identities look different from the training ones: their canonical albedos differ
    train_albedo = np.stack([example["albedo"].numpy() for example in train])
    test_albedo = np.stack([example["albedo"].numpy() for example in test])
    distances = np.abs(train_albedo[:, None] - test_albedo[None]).mean(axis=(2, 3, 4))
    assert distances.min() > 0.01


def test_every_example_stores_its_ground_truth(dataset):
    out, _ = dataset
    description, examples = _read_examples(out, "train")
    assert description["num_landmarks"] == synth.NUM_LANDMARKS
    assert all(description["has"][field] for field in schema.OPTIONAL_FIELDS if field != schema.ATTRIBUTES)
    for example in examples:
        assert tuple(example["image"].shape) == (SIZE, SIZE, 3)
        assert tuple(example["landmarks"].shape) == (68, 2)
        yaw, pitch, roll = example["pose"].numpy()
        assert abs(yaw) <= OPTIONS.max_yaw and abs(pitch) <= OPTIONS.max_pitch and abs(roll) <= OPTIONS.max_roll
        k_a, k_d, *direction = example["light"].numpy()
        assert OPTIONS.ambient[0] <= k_a <= OPTIONS.ambient[1] and OPTIONS.diffuse[0] <= k_d <= OPTIONS.diffuse[1]
        assert np.linalg.norm(direction) == pytest.approx(1.0, abs=1e-5) and direction[2] > 0
        assert tuple(example["depth"].shape) == (64, 64) and tuple(example["albedo"].shape) == (64, 64, 3)
        assert example["depth"].numpy().min() > 0.0  # the nearest point (nose tip) stays inside DEPTH_RANGE


def test_label_noise_rate_and_true_labels():
    true_labels = np.arange(20000) % 50
    given = synth.noisy_labels(true_labels, 50, 0.2, seed=0)
    flipped = given != true_labels
    assert abs(flipped.mean() - 0.2) < 0.015
    assert given.min() >= 0 and given.max() < 50
    # the replacement is uniform over the other classes
    counts = np.bincount(given[flipped], minlength=50)
    assert counts.min() > 0.6 * counts.mean()
    np.testing.assert_array_equal(synth.noisy_labels(true_labels, 50, 0.0, seed=0), true_labels)
    with pytest.raises(ValueError, match="label_noise"):
        synth.noisy_labels(true_labels, 50, 1.5, seed=0)


def test_generated_labels_keep_the_true_identity(dataset):
    out, summary = dataset
    _, examples = _read_examples(out, "train")
    labels = np.array([int(example["label"]) for example in examples])
    true_labels = np.array([int(example["true_label"]) for example in examples])
    identities = [int(example["source_id"].numpy().decode().split("/")[0].split("_")[1]) for example in examples]
    np.testing.assert_array_equal(true_labels, identities)
    assert np.sum(labels != true_labels) == summary["train"]["noisy_labels"] > 0


def test_landmarks_lie_inside_the_image(dataset):
    out, _ = dataset
    _, examples = _read_examples(out, "test")
    landmarks = np.stack([example["landmarks"].numpy() for example in examples])
    assert landmarks.min() >= 0.0 and landmarks.max() <= SIZE


def test_landmarks_follow_yaw_as_computed_by_hand():
    """Nose tip (landmark 30) of a frontal face, moved by yaw +-20 degrees about (0, 0, 1) with numpy."""
    renderer = synth.SynthFaceRenderer(OPTIONS, BATCH)
    view = synth.sample_view(2, 7, 0, OPTIONS)
    view.update(yaw=0.0, pitch=0.0, roll=0.0, translation=np.zeros(3))
    views = [dict(view, yaw=yaw) for yaw in (0.0, 20.0, -20.0)]
    rendered = renderer.render_views(2, [7, 7, 7], views)
    nose = rendered["landmarks"][:, 30]
    assert nose[1, 0] < nose[0, 0] - 3.0 < nose[0, 0] + 3.0 < nose[2, 0]  # yaw > 0 turns the face to the left

    focal = (SIZE - 1) / (2 * math.tan(math.radians(synth.FOV_DEGREES / 2)))
    center = (SIZE - 1) / 2
    u, v = nose[0] - 0.5  # frontal: pixel of the canonical keypoint (schema pixels -> pixel centres)
    q = np.array([u - center, v - center]) / center
    depth_map = rendered["depth"][0] * (synth.DEPTH_RANGE[1] - synth.DEPTH_RANGE[0]) + synth.DEPTH_RANGE[0]
    grid = (q + 1.0) * (synth.CANONICAL_MAP_SIZE - 1) / 2  # the keypoint on the 64x64 canonical map
    x0, y0 = np.floor(grid).astype(int)
    fx, fy = grid - np.floor(grid)
    z = ((1 - fx) * (1 - fy) * depth_map[y0, x0] + fx * (1 - fy) * depth_map[y0, x0 + 1]
         + (1 - fx) * fy * depth_map[y0 + 1, x0] + fx * fy * depth_map[y0 + 1, x0 + 1])
    point = np.array([(u - center) / focal * z, (v - center) / focal * z, z])
    for index, yaw in ((1, 20.0), (2, -20.0)):
        a = math.radians(yaw)
        relative = point - [0.0, 0.0, 1.0]
        rotated = np.array([math.cos(a) * relative[0] + math.sin(a) * relative[2], relative[1],
                            -math.sin(a) * relative[0] + math.cos(a) * relative[2]]) + [0.0, 0.0, 1.0]
        expected = focal * rotated[:2] / rotated[2] + center + 0.5
        np.testing.assert_allclose(nose[index], expected, atol=0.1)


def test_five_point_set_from_68():
    landmarks = np.random.default_rng(0).uniform(0, 32, (2, 68, 2))
    five = synth.five_point_landmarks(landmarks)
    np.testing.assert_allclose(five[:, 0], landmarks[:, 36:42].mean(axis=1))
    np.testing.assert_allclose(five[:, 1], landmarks[:, 42:48].mean(axis=1))
    np.testing.assert_allclose(five[:, 2:], landmarks[:, [30, 48, 54]])
    with pytest.raises(ValueError, match="landmarks68"):
        synth.five_point_landmarks(np.zeros((5, 2)))


def test_pairs_file_parses_and_names_existing_images(dataset):
    out, summary = dataset
    pairs = read_lfw_pairs(out / "test" / "pairs.txt", out / "test", check_files=True)
    folds, per_fold = summary["test"]["pairs"]["folds"], summary["test"]["pairs"]["pairs_per_fold"]
    assert (folds, per_fold) == (2, 6)  # 4 identities -> 2 folds of 2; 2 x C(3, 2) matched pairs per fold
    assert (out / "test" / "pairs.txt").read_text().splitlines()[0].split() == [str(folds), str(per_fold)]
    assert len(pairs.issame) == 2 * folds * per_fold
    for path1, path2, same in zip(pairs.paths1, pairs.paths2, pairs.issame):
        assert (path1.split("/")[-2] == path2.split("/")[-2]) == bool(same)
        assert path1 != path2
        with Image.open(path1) as image:
            assert image.size == (SIZE, SIZE)
    # every identity sits in one fold only
    fold_of = {}
    for path1, path2, fold in zip(pairs.paths1, pairs.paths2, pairs.folds):
        for path in (path1, path2):
            assert fold_of.setdefault(path.split("/")[-2], fold) == fold


def test_lfw_pairs_scale_to_the_test_set():
    counts = {synth.identity_name(i): 5 for i in range(40)}
    folds, per_fold, lines = synth.lfw_pairs(counts, folds=10, pairs_per_fold=300, seed=0)
    assert (folds, per_fold) == (10, 40)  # 4 identities per fold: 4 * C(5, 2) = 40 matched pairs available
    assert len(lines) == len(set(lines)) == 2 * 10 * 40
    with pytest.raises(ValueError, match="2 test identities"):
        synth.lfw_pairs({"a": 3}, folds=10, pairs_per_fold=10, seed=0)


def test_long_tail_counts_follow_zipf():
    counts = synth.images_per_identity_counts(100, 50, seed=0, long_tail=1.0)
    expected = np.maximum(2, np.round(50.0 / np.arange(1, 101)))
    np.testing.assert_array_equal(np.sort(counts)[::-1], expected)
    assert counts[0] != counts.max() or counts[1] != np.sort(counts)[-2]  # ranks are shuffled over identities
    np.testing.assert_array_equal(synth.images_per_identity_counts(5, 7, seed=0), [7] * 5)
    with pytest.raises(ValueError, match="long_tail"):
        synth.images_per_identity_counts(5, 7, seed=0, long_tail=-1.0)


def test_same_identity_is_closer_than_other_identities_at_frontal_pose():
    frontal = synth.SynthOptions(image_size=SIZE, max_yaw=0.0, max_pitch=0.0, max_roll=0.0, scale_jitter=0.0,
                                 shift_jitter=0.0)
    identities = np.repeat(np.arange(4), 4)
    images = synth.SynthFaceRenderer(frontal, BATCH).render(1, identities, np.tile(np.arange(4), 4))["image"]
    faces = images[:, 6:26, 6:26].reshape(16, -1).astype(np.float64) / 255.0
    distances = np.linalg.norm(faces[:, None] - faces[None], axis=-1)
    same = identities[:, None] == identities[None]
    off_diagonal = ~np.eye(16, dtype=bool)
    assert distances[same & off_diagonal].mean() < 0.8 * distances[~same].mean()


def test_cli_writes_the_data_set_and_a_preview(tmp_path, capsys, monkeypatch):
    out = tmp_path / "faces"
    renamed = []  # every file is written to a temporary name and renamed into place

    def recording_replace(source, target, replace=os.replace):
        renamed.append(Path(target))
        replace(source, target)

    monkeypatch.setattr(image_io.os, "replace", recording_replace)
    code = synth_tool.main(["--out", str(out), "--identities", "3", "--images-per-identity", "2", "--seed", "1",
                            "--test-identities", "2", "--image-size", str(SIZE), "--batch-size", str(BATCH),
                            "--long-tail", "0.5", "--no-progress"])
    assert code == 0
    assert "images/s" in capsys.readouterr().out
    assert read_description(out, "train")["num_examples"] == 2 + 2 + 2  # max(2, round(2 r^-0.5)) = 2
    assert (out / "test" / "pairs.txt").is_file() and (out / "test.json").is_file()
    assert json.loads((out / "synth.json").read_text())["train"]["long_tail"] == 0.5
    with Image.open(out / "preview.png") as preview:
        assert preview.size[0] > 100
    test_images = sorted((out / "test").rglob("*.png"))
    assert len(test_images) == 2 * 2
    assert set(test_images + [out / "test" / "pairs.txt", out / "synth.json", out / "preview.png"]) <= set(renamed)
    assert not [path for path in out.rglob("*") if "partial" in path.name or path.suffix == ".tmp"]


def test_cli_rejects_bad_options(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--identities", "3", "--images-per-identity", "2", "--seed", "0"]
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    for flag, path in (("--out", in_the_way), ("--out", in_the_way / "faces"), ("--preview", in_the_way / "p.png")):
        arguments = base + [flag, str(path)] if flag == "--preview" else ["--out", str(path)] + base[2:]
        assert synth_tool.main(arguments) == 2
        assert capsys.readouterr().err.strip() == f"error: {flag} {path}: {in_the_way} is not a folder"
    for extra, message in ((["--label-noise", "2"], "--label-noise"), (["--max-yaw", "90"], "--max-yaw"),
                           (["--test-identities", "1"], "--test-identities"), (["--image-size", "8"], "--image-size")):
        assert synth_tool.main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_bench_prints_the_generation_rate(capsys):
    assert bench_synth.main(["--image-size", str(SIZE), "--batch-size", str(BATCH), "--batches", "1"]) == 0
    assert "images per CPU-second" in capsys.readouterr().out
    assert bench_synth.main(["--batches", "0"]) == 2


def test_options_reject_bad_values():
    with pytest.raises(ValueError, match="max_yaw"):
        synth.SynthOptions(max_yaw=-1.0)
    with pytest.raises(ValueError, match="ambient"):
        synth.SynthOptions(ambient=(0.5, 0.2))
    with pytest.raises(ValueError, match="identities"):
        synth.SynthFaceRenderer(OPTIONS, BATCH).render(0, [], [])
