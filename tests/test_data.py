"""tfface.data: schema round trip, sharded writer, tf.data reader geometry (all checked against hand computations)."""
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfface.data import (
    LANDMARK_FLIP_PERMUTATIONS,
    ShardedTFRecordWriter,
    denormalize_images,
    flip_landmarks,
    make_dataset,
    make_example,
    normalize_images,
    parse_example,
    read_description,
)
from tfface.training.strategy import mirrored_strategy

HEIGHT, WIDTH = 8, 10
# left eye, right eye, nose, left mouth, right mouth in pixel (x, y) of an 8 x 10 image
FIVE_POINTS = np.array([[2.0, 3.0], [6.0, 2.5], [4.5, 4.0], [3.0, 6.0], [7.0, 6.5]], np.float32)
POSE = np.array([30.0, 10.0, -5.0], np.float32)


def coded_image(height=HEIGHT, width=WIDTH):
    """uint8 [h, w, 3]: channel 0 = 10 y + x (unique per pixel, so crops and flips can be read off), 1 and 2 fixed."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([10 * ys + xs, np.full_like(ys, 200), np.full_like(ys, 7)], axis=-1).astype(np.uint8)


def raw_pixels(images):
    """Undo the (p - 127.5) / 128 normalisation by hand."""
    return np.asarray(images) * 128.0 + 127.5


def write_dataset(out_dir, examples, prefix="train", examples_per_shard=2000, class_names=None):
    with ShardedTFRecordWriter(out_dir, prefix, examples_per_shard, class_names=class_names) as writer:
        for example in examples:
            writer.write(example)
    return out_dir


# ---------------------------------------------------------------- schema


def test_every_field_round_trips():
    image = coded_image()
    depth = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(4, 3)
    albedo = np.linspace(0.0, 1.0, 36, dtype=np.float32).reshape(4, 3, 3)
    example = make_example(
        image, 3, true_label=1, landmarks=FIVE_POINTS, pose=POSE, light=[0.5, 0.25, 1.0, -2.0, 0.75],
        attributes=[1.0, 0.0], source_id="alice/ä 1.png", depth=depth, albedo=albedo, image_format="png",
    )
    parsed = parse_example(example.SerializeToString())

    np.testing.assert_array_equal(parsed["image"].numpy(), image)
    assert parsed["image"].dtype == tf.uint8
    assert parsed["image_format"].numpy() == b"png"
    assert parsed["label"].numpy() == 3 and parsed["true_label"].numpy() == 1
    assert parsed["label"].dtype == tf.int32 and parsed["true_label"].dtype == tf.int32
    np.testing.assert_array_equal(parsed["landmarks"].numpy(), FIVE_POINTS)
    np.testing.assert_array_equal(parsed["pose"].numpy(), POSE)
    np.testing.assert_array_equal(parsed["light"].numpy(), [0.5, 0.25, 1.0, -2.0, 0.75])
    np.testing.assert_array_equal(parsed["attributes"].numpy(), [1.0, 0.0])
    assert parsed["source_id"].numpy().decode("utf-8") == "alice/ä 1.png"
    # float16 storage: exactly what numpy's float16 rounding gives
    np.testing.assert_array_equal(parsed["depth"].numpy(), depth.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(parsed["albedo"].numpy(), albedo.astype(np.float16).astype(np.float32))
    for field in ("true_label", "landmarks", "pose", "light", "attributes", "depth", "albedo"):
        assert parsed[f"has_{field}"].numpy(), field
    features = example.features.feature
    assert features["image/height"].int64_list.value[0] == HEIGHT
    assert features["image/width"].int64_list.value[0] == WIDTH


def test_missing_fields_differ_from_zeros():
    bare = parse_example(make_example(coded_image(), 4).SerializeToString())
    zeros = parse_example(
        make_example(coded_image(), 4, landmarks=np.zeros((5, 2)), pose=np.zeros(3), light=[0.0]).SerializeToString()
    )
    for field in ("true_label", "landmarks", "pose", "light", "attributes", "depth", "albedo"):
        assert not bare[f"has_{field}"].numpy(), field
    assert bare["true_label"].numpy() == 4  # defaults to the label
    assert bare["landmarks"].shape == (0, 2) and bare["pose"].shape == (0,)
    assert bare["depth"].shape == (0, 0) and bare["albedo"].shape == (0, 0, 3)
    assert bare["source_id"].numpy() == b""
    assert zeros["has_landmarks"].numpy() and zeros["has_pose"].numpy() and zeros["has_light"].numpy()
    np.testing.assert_array_equal(zeros["landmarks"].numpy(), np.zeros((5, 2)))


def test_grey_becomes_three_channels_and_jpeg_is_close():
    grey = coded_image()[:, :, 0]
    parsed = parse_example(make_example(grey, 0).SerializeToString())
    np.testing.assert_array_equal(parsed["image"].numpy(), np.repeat(grey[:, :, None], 3, axis=2))

    smooth = np.full((16, 16, 3), 90, np.uint8)
    smooth[:, 8:] = 160
    parsed = parse_example(make_example(smooth, 0, image_format="jpg").SerializeToString())
    assert parsed["image_format"].numpy() == b"jpeg"
    assert np.abs(parsed["image"].numpy().astype(int) - smooth).mean() < 3.0


def test_encoded_bytes_are_stored_as_given():
    buffer = io.BytesIO()
    Image.fromarray(coded_image()).save(buffer, format="PNG")
    encoded = buffer.getvalue()
    example = make_example(encoded, 2)
    features = example.features.feature
    assert features["image/encoded"].bytes_list.value[0] == encoded
    assert (features["image/height"].int64_list.value[0], features["image/width"].int64_list.value[0]) == (8, 10)
    np.testing.assert_array_equal(parse_example(example.SerializeToString())["image"].numpy(), coded_image())
    with pytest.raises(ValueError, match="image_format is 'jpeg'"):
        make_example(encoded, 2, image_format="jpeg")
    with pytest.raises(ValueError, match="not a readable image"):
        make_example(b"not an image", 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label": -1}, "label must be >= 0"),
        ({"label": 1.5}, "label must be an int"),
        ({"true_label": -2}, "true_label must be >= 0"),
        ({"landmarks": np.zeros((5, 3))}, r"landmarks must have shape \[\*, 2\]"),
        ({"pose": [1.0, 2.0]}, r"pose must have shape \[3\]"),
        ({"light": [np.nan]}, "light must be finite"),
        ({"attributes": []}, "attributes must not be empty"),
        ({"depth": np.full((2, 2), 1.5)}, r"depth values must lie in \[0, 1\]"),
        ({"albedo": np.zeros((2, 2))}, r"albedo must have shape \[\*, \*, 3\]"),
        ({"image": np.zeros((4, 4, 3), np.float32)}, "image must be uint8"),
        ({"image": np.zeros((4, 4, 2), np.uint8)}, "image must have shape"),
        ({"image_format": "gif"}, "image_format must be one of"),
        ({"source_id": 7}, "source_id must be a str"),
    ],
)
def test_make_example_rejects_bad_input(kwargs, message):
    arguments = {"image": coded_image(), "label": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_example(arguments.pop("image"), arguments.pop("label"), **arguments)


# ---------------------------------------------------------------- writer


def test_writer_shards_renames_and_describes(tmp_path):
    labels = [0, 2, 2, 1, 2]
    writer = ShardedTFRecordWriter(tmp_path, "faces", examples_per_shard=2, class_names=["ann", "bob", "cy"])
    with writer:
        for index, label in enumerate(labels):
            writer.write(make_example(coded_image(), label, landmarks=FIVE_POINTS + index, source_id=f"id{index}"))
            names = sorted(path.name for path in tmp_path.iterdir())
            assert all(name.endswith(".tfrecord.tmp") for name in names), names  # nothing final before close
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["faces-00000.tfrecord", "faces-00001.tfrecord", "faces-00002.tfrecord", "faces.json"]

    per_shard = [
        [parse_example(record)["source_id"].numpy().decode() for record in tf.data.TFRecordDataset(str(path))]
        for path in sorted(tmp_path.glob("*.tfrecord"))
    ]
    assert per_shard == [["id0", "id1"], ["id2", "id3"], ["id4"]]

    stored = json.loads((tmp_path / "faces.json").read_text())
    assert stored["num_examples"] == 5 and stored["num_classes"] == 3
    assert stored["class_counts"] == {"0": 1, "1": 1, "2": 3}
    assert stored["image_size"] == [8, 10] and stored["num_landmarks"] == 5
    assert stored["has"] == {
        "true_label": False, "landmarks": True, "pose": False, "light": False,
        "attributes": False, "depth": False, "albedo": False,
    }
    assert stored["shards"] == ["faces-00000.tfrecord", "faces-00001.tfrecord", "faces-00002.tfrecord"]
    assert stored["class_names"] == ["ann", "bob", "cy"]
    description = read_description(tmp_path, "faces")
    assert description["class_counts"] == {0: 1, 1: 1, 2: 3}


def test_partial_field_is_not_marked_present(tmp_path):
    write_dataset(tmp_path, [make_example(coded_image(), 0, pose=POSE), make_example(coded_image(), 1)])
    description = read_description(tmp_path)
    assert description["has"]["pose"] is False and description["present_counts"]["pose"] == 1


def test_interrupted_writer_leaves_no_final_files(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardedTFRecordWriter(tmp_path, examples_per_shard=1) as writer:
            writer.write(make_example(coded_image(), 0))
            writer.write(make_example(coded_image(), 1))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_removes_stale_shards(tmp_path):
    write_dataset(tmp_path, [make_example(coded_image(), 0)] * 3, examples_per_shard=1)
    write_dataset(tmp_path, [make_example(coded_image(), 0)] * 2, examples_per_shard=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train-00000.tfrecord", "train.json"]


def test_writer_rejects_inconsistent_examples(tmp_path):
    with ShardedTFRecordWriter(tmp_path, class_names=["a"]) as writer:
        writer.write(make_example(coded_image(), 0, landmarks=FIVE_POINTS))
        with pytest.raises(ValueError, match=r"example 1: landmarks has shape \[4, 2\], but earlier examples"):
            writer.write(make_example(coded_image(), 0, landmarks=FIVE_POINTS[:4]))
        with pytest.raises(ValueError, match="label 1 has no entry in class_names"):
            writer.write(make_example(coded_image(), 1))
        with pytest.raises(TypeError, match="tf.train.Example"):
            writer.write(b"bytes")
    assert read_description(tmp_path)["num_examples"] == 1
    with pytest.raises(ValueError, match="examples_per_shard"):
        ShardedTFRecordWriter(tmp_path, examples_per_shard=0)


def test_read_description_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.json"):
        read_description(tmp_path)
    (tmp_path / "train.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"train\.json is not valid JSON"):
        read_description(tmp_path)
    (tmp_path / "train.json").write_text('{"num_examples": 1}')
    with pytest.raises(ValueError, match=r"train\.json lacks keys \['num_classes'"):
        read_description(tmp_path)


# ---------------------------------------------------------------- pipeline


@pytest.fixture
def five_point_dir(tmp_path):
    """One example with landmarks, pose, light, depth and albedo, plus a second plain image."""
    depth = np.zeros((2, 3), np.float32)
    depth[:, 0] = 1.0  # left column bright: a mirror moves it to the right
    albedo = np.zeros((2, 3, 3), np.float32)
    albedo[:, 0, 0] = 1.0
    first = make_example(
        coded_image(), 1, true_label=0, landmarks=FIVE_POINTS, pose=POSE, light=[0.5, 0.25], attributes=[1.0],
        depth=depth, albedo=albedo, source_id="first",
    )
    second = make_example(
        np.full((HEIGHT, WIDTH, 3), 255, np.uint8), 0, true_label=0, landmarks=FIVE_POINTS, pose=POSE,
        light=[0.0, 0.0], attributes=[0.0], depth=depth, albedo=albedo, source_id="second",
    )
    return write_dataset(tmp_path, [first, second])


def test_eval_batch_values_shapes_and_dtypes(five_point_dir):
    features = ("landmarks", "pose", "light", "attributes", "true_label", "depth", "albedo", "source_id")
    dataset = make_dataset(five_point_dir, batch_size=2, training=False, features=features)
    assert dataset.cardinality().numpy() == 1
    batch = next(iter(dataset))
    assert set(batch) == {"image", "label", *features}
    assert batch["image"].shape == (2, HEIGHT, WIDTH, 3) and batch["image"].dtype == tf.float32
    # (p - 127.5) / 128 by hand: pixel 0 -> -0.99609375, 255 -> 0.99609375, 200 -> 0.56640625
    assert batch["image"][0, 0, 0, 0].numpy() == -0.99609375
    assert batch["image"][0, 3, 4, 1].numpy() == 0.56640625
    np.testing.assert_array_equal(batch["image"][1].numpy(), np.full((HEIGHT, WIDTH, 3), 0.99609375, np.float32))
    np.testing.assert_allclose(raw_pixels(batch["image"][0]), coded_image(), atol=1e-4)
    assert batch["label"].dtype == tf.int32 and batch["label"].numpy().tolist() == [1, 0]
    assert batch["true_label"].dtype == tf.int32 and batch["true_label"].numpy().tolist() == [0, 0]
    np.testing.assert_allclose(batch["landmarks"][0].numpy(), FIVE_POINTS / [WIDTH, HEIGHT], rtol=1e-6)
    np.testing.assert_array_equal(batch["pose"].numpy(), [POSE, POSE])
    np.testing.assert_array_equal(batch["light"].numpy(), [[0.5, 0.25], [0.0, 0.0]])
    assert batch["attributes"].shape == (2, 1) and batch["depth"].shape == (2, 2, 3)
    assert batch["albedo"].shape == (2, 2, 3, 3)
    assert batch["source_id"].numpy().tolist() == [b"first", b"second"]


def test_flip_mirrors_landmarks_permutes_indices_and_negates_yaw(five_point_dir):
    dataset = make_dataset(
        five_point_dir, batch_size=1, training=True, features=("landmarks", "pose", "depth", "albedo"), seed=3,
        shuffle_buffer=1,
    )
    # by hand: x -> 10 - x, then (left eye, right eye, nose, left mouth, right mouth) <- (RE, LE, nose, RM, LM)
    flipped_points = np.array([[4.0, 2.5], [8.0, 3.0], [5.5, 4.0], [3.0, 6.5], [7.0, 6.0]], np.float32)
    seen = set()
    for batch in dataset.take(24):
        pixels = raw_pixels(batch["image"][0])
        if np.allclose(pixels, 255.0):
            continue  # the plain second image: its flip is invisible
        is_flipped = np.allclose(pixels, coded_image()[:, ::-1], atol=1e-4)
        assert is_flipped or np.allclose(pixels, coded_image(), atol=1e-4)
        points = flipped_points if is_flipped else FIVE_POINTS
        np.testing.assert_allclose(batch["landmarks"][0].numpy(), points / [WIDTH, HEIGHT], rtol=1e-6)
        np.testing.assert_array_equal(batch["pose"][0].numpy(), [-30.0, 10.0, 5.0] if is_flipped else POSE)
        bright_column = 2 if is_flipped else 0
        assert batch["depth"][0, :, bright_column].numpy().tolist() == [1.0, 1.0]
        assert batch["albedo"][0, :, bright_column, 0].numpy().tolist() == [1.0, 1.0]
        seen.add(is_flipped)
    assert seen == {True, False}


def test_centre_crop_shifts_landmarks(five_point_dir):
    batch = next(iter(make_dataset(five_point_dir, batch_size=1, training=False, crop_size=(4, 6),
                                   features=("landmarks",))))
    # offsets by hand: top = (8 - 4) // 2 = 2, left = (10 - 6) // 2 = 2; output 4 x 6
    np.testing.assert_allclose(raw_pixels(batch["image"][0]), coded_image()[2:6, 2:8], atol=1e-4)
    expected = np.array([[0.0, 1.0], [4.0, 0.5], [2.5, 2.0], [1.0, 4.0], [5.0, 4.5]]) / [6.0, 4.0]
    np.testing.assert_allclose(batch["landmarks"][0].numpy(), expected, rtol=1e-6)


def test_random_crop_shifts_landmarks_by_its_offset(five_point_dir):
    dataset = make_dataset(five_point_dir, batch_size=1, training=True, flip=False, crop_size=(4, 6),
                           features=("landmarks",), seed=0, shuffle_buffer=1)
    offsets = set()
    for batch in dataset.take(24):
        pixels = raw_pixels(batch["image"][0])
        if np.allclose(pixels, 255.0):
            continue
        corner = int(round(pixels[0, 0, 0]))  # channel 0 = 10 * top + left
        top, left = divmod(corner, 10)
        np.testing.assert_allclose(pixels, coded_image()[top:top + 4, left:left + 6], atol=1e-4)
        expected = (FIVE_POINTS - [left, top]) / [6.0, 4.0]
        np.testing.assert_allclose(batch["landmarks"][0].numpy(), expected, rtol=1e-5, atol=1e-6)
        offsets.add((top, left))
    assert len(offsets) > 1


def test_resize_keeps_normalised_landmarks(five_point_dir):
    batch = next(iter(make_dataset(five_point_dir, batch_size=2, training=False, image_size=(16, 20),
                                   features=("landmarks",))))
    assert batch["image"].shape == (2, 16, 20, 3)
    np.testing.assert_allclose(batch["image"][1].numpy(), 0.99609375, atol=1e-5)  # constant stays constant
    np.testing.assert_allclose(batch["landmarks"][0].numpy(), FIVE_POINTS / [WIDTH, HEIGHT], rtol=1e-6)


def test_training_batches_repeat_with_static_shapes(five_point_dir):
    dataset = make_dataset(five_point_dir, batch_size=3, features=("landmarks",), seed=1)
    assert dataset.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    assert dataset.element_spec["image"].shape == (3, HEIGHT, WIDTH, 3)
    assert dataset.element_spec["landmarks"].shape == (3, 5, 2)
    labels = np.concatenate([batch["label"].numpy() for batch in dataset.take(4)])
    assert sorted(set(labels.tolist())) == [0, 1]


def test_cached_and_seeded_datasets_repeat_identically(five_point_dir):
    def first_batches(**kwargs):
        dataset = make_dataset(five_point_dir, batch_size=2, crop_size=6, features=("landmarks",), seed=7, **kwargs)
        return [batch["landmarks"].numpy() for batch in dataset.take(3)]

    np.testing.assert_array_equal(first_batches(), first_batches())
    np.testing.assert_array_equal(first_batches(cache=True), first_batches())


KILLED_WHILE_CACHING = """
import os, sys
from tfface.data import make_dataset
dataset = make_dataset(sys.argv[1], batch_size=2, shuffle_buffer=1, cache=sys.argv[2], seed=0)
iterator = iter(dataset)  # held: a dropped iterator removes its lock
next(iterator)
print(sorted(os.listdir(os.path.dirname(sys.argv[2]))), flush=True)
os._exit(0)  # killed: no cleanup, the cache's lock stays
"""


def test_a_cache_file_left_locked_by_a_killed_run_is_taken_over(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    write_dataset(tmp_path / "data", [make_example(coded_image(), i % 3) for i in range(400)])
    cache = tmp_path / "cache" / "train"
    repo = Path(__file__).resolve().parents[1]
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_CACHING, str(tmp_path / "data"), str(cache)],
                            cwd=repo, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "train_0.lockfile" in killed.stdout and "train.index" not in killed.stdout, killed.stdout

    dataset = make_dataset(tmp_path / "data", batch_size=50, shuffle_buffer=1, cache=str(cache), seed=0)
    assert "removed the lock and 1 partial file(s)" in capsys.readouterr().out
    labels = np.concatenate([batch["label"].numpy() for batch in dataset.take(9)])  # 450 > 400: one full pass
    assert labels.shape == (450,) and set(labels.tolist()) == {0, 1, 2}
    del dataset
    names = sorted(path.name for path in cache.parent.iterdir())
    assert "train.index" in names and not [name for name in names if "lockfile" in name or "tempstate" in name]
    # the finished cache is read as it is
    make_dataset(tmp_path / "data", batch_size=50, cache=str(cache))
    assert capsys.readouterr().out == ""


def test_a_cache_file_locked_by_a_live_or_unknown_process_is_refused(tmp_path):
    import os
    import socket

    write_dataset(tmp_path, [make_example(coded_image(), 0)])
    cache = tmp_path / "cache"
    (tmp_path / "cache_0.lockfile").write_text("Created at: 0")
    with pytest.raises(ValueError, match=r"cache .*cache is being written by an unknown process \(lock .*cache_0\.lockfile"):
        make_dataset(tmp_path, batch_size=1, cache=str(cache))
    live = os.getppid()
    (tmp_path / "cache.owner").write_text(json.dumps({"host": socket.gethostname(), "pid": live}))
    with pytest.raises(ValueError, match=f"being written by process {live} on {socket.gethostname()}"):
        make_dataset(tmp_path, batch_size=1, cache=str(cache))
    assert (tmp_path / "cache_0.lockfile").is_file()


def test_examples_come_in_written_order_across_shards(tmp_path):
    write_dataset(tmp_path, [make_example(coded_image(), i, source_id=str(i)) for i in range(5)],
                  examples_per_shard=2)
    dataset = make_dataset(tmp_path, batch_size=2, training=False, features=("source_id",))
    assert dataset.cardinality().numpy() == 3
    ids = [int(s) for batch in dataset for s in batch["source_id"].numpy()]
    assert ids == [0, 1, 2, 3, 4]


def test_reader_errors_are_clear(tmp_path, five_point_dir):
    with pytest.raises(FileNotFoundError, match="data directory not found: .*nowhere"):
        make_dataset(tmp_path / "nowhere", batch_size=1)
    plain = write_dataset(tmp_path / "plain", [make_example(coded_image(), 0)])
    with pytest.raises(ValueError, match=r"feature 'pose' was requested, but data set 'train' in .*plain"):
        make_dataset(plain, batch_size=1, features=("pose",))
    with pytest.raises(ValueError, match=r"unknown features \['colour'\]"):
        make_dataset(plain, batch_size=1, features=("colour",))
    with pytest.raises(ValueError, match="crop_size"):
        make_dataset(plain, batch_size=1, crop_size=(9, 4))
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(plain, batch_size=0)
    four = write_dataset(tmp_path / "four", [make_example(coded_image(), 0, landmarks=FIVE_POINTS[:4])])
    with pytest.raises(ValueError, match="cannot flip 4 landmarks"):
        make_dataset(four, batch_size=1, features=("landmarks",))
    make_dataset(four, batch_size=1, features=("landmarks",), flip=False)


def test_normalize_and_denormalize_by_hand():
    pixels = np.array([0, 127, 128, 255], np.uint8)
    normalised = normalize_images(pixels)
    assert normalised.dtype == tf.float32
    np.testing.assert_array_equal(np.asarray(normalised), [-0.99609375, -0.00390625, 0.00390625, 0.99609375])
    restored = denormalize_images(normalised)
    assert restored.dtype == tf.uint8
    np.testing.assert_array_equal(np.asarray(restored), pixels)
    np.testing.assert_array_equal(np.asarray(denormalize_images(np.array([-2.0, 2.0]))), [0, 255])


def test_68_point_flip_permutation():
    permutation = np.array(LANDMARK_FLIP_PERMUTATIONS[68])
    assert sorted(permutation.tolist()) == list(range(68))
    np.testing.assert_array_equal(permutation[permutation], np.arange(68))  # mirroring twice is the identity
    pairs = {0: 16, 8: 8, 17: 26, 21: 22, 27: 27, 30: 30, 31: 35, 33: 33, 36: 45, 39: 42, 40: 47, 41: 46,
             48: 54, 51: 51, 55: 59, 57: 57, 60: 64, 62: 62, 65: 67, 66: 66}
    for index, partner in pairs.items():
        assert permutation[index] == partner and permutation[partner] == index
    points = np.stack([np.arange(68, dtype=np.float32), np.zeros(68, np.float32)], axis=-1)
    flipped = flip_landmarks(points, 100.0).numpy()
    np.testing.assert_array_equal(flipped[36], [100.0 - 45.0, 0.0])  # left eye corner <- mirrored right one
    np.testing.assert_array_equal(flipped[:, 0], 100.0 - permutation)


def test_batches_split_across_mirrored_replicas(five_point_dir):
    strategy = mirrored_strategy()
    assert strategy.num_replicas_in_sync == 2
    dataset = make_dataset(five_point_dir, batch_size=4, features=("landmarks",), seed=0)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    per_replica = strategy.experimental_local_results(batch["image"])
    assert [images.shape for images in per_replica] == [(2, HEIGHT, WIDTH, 3)] * 2
    assert [points.shape for points in strategy.experimental_local_results(batch["landmarks"])] == [(2, 5, 2)] * 2
