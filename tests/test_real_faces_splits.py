"""experiments/real_faces/splits.py: the label-noise and long-tailed training splits are deterministic, change what
they say they change, and stay inside the training identities (disjoint from CFP folds 6 and 7)."""
import csv
from pathlib import Path

import numpy as np
import pytest

from experiments.real_faces import prepare_cfp, splits
from tfface.data import schema
from tfface.data.writer import ShardedTFRecordWriter, read_description

HELD_OUT = set(prepare_cfp.fold_identities(prepare_cfp.VALIDATION_FOLD)) | set(
    prepare_cfp.fold_identities(prepare_cfp.TEST_FOLD))


def test_fold_identities_follow_the_cfp_readme():
    """Fold k holds identities 50k+1 .. 50k+50; training is folds 0-5 (001-300), disjoint from folds 6 and 7."""
    assert list(prepare_cfp.fold_identities(6)) == list(range(301, 351))
    assert list(prepare_cfp.fold_identities(7)) == list(range(351, 401))
    assert set(prepare_cfp.TRAIN_IDENTITIES) == set(range(1, 301))
    assert not set(prepare_cfp.TRAIN_IDENTITIES) & HELD_OUT


def test_noisy_labels_move_the_stated_share_to_other_classes_deterministically():
    labels = np.repeat(np.arange(10), 7)  # 70 images of 10 classes
    noisy = splits.noisy_labels(labels, 10, 0.2, seed=0)
    changed = np.flatnonzero(noisy != labels)
    assert len(changed) == 14  # round(0.2 * 70); every chosen image gets a different class
    assert noisy.min() >= 0 and noisy.max() <= 9
    np.testing.assert_array_equal(splits.noisy_labels(labels, 10, 0.2, seed=0), noisy)
    assert not np.array_equal(splits.noisy_labels(labels, 10, 0.2, seed=1), noisy)
    assert len(np.flatnonzero(splits.noisy_labels(labels, 10, 0.4, seed=0) != labels)) == 28


def test_noisy_labels_draw_the_other_classes_uniformly():
    """Two classes: a relabelled image can only go to the other one; with many classes every other class is drawn
    about equally often (each of 9 others has probability 1/9 per relabelled image)."""
    labels = np.array([0, 1] * 50)
    noisy = splits.noisy_labels(labels, 2, 0.4, seed=3)
    changed = noisy != labels
    np.testing.assert_array_equal(noisy[changed], 1 - labels[changed])
    labels = np.zeros(9000, np.int64)
    counts = np.bincount(splits.noisy_labels(labels, 10, 0.9, seed=0), minlength=10)
    assert counts[0] == 900
    assert np.all(np.abs(counts[1:] - 900) < 5 * np.sqrt(900))


def test_long_tail_keeps_two_images_of_half_the_identities_deterministically():
    labels = np.repeat(np.arange(8), [10, 12, 11, 14, 10, 10, 13, 12])
    kept, tail = splits.long_tail_keep(labels, seed=0)
    assert len(tail) == 4
    counts = np.bincount(labels[kept], minlength=8)
    full = np.bincount(labels, minlength=8)
    for label in range(8):
        assert counts[label] == (2 if label in tail else full[label])
    again, tail_again = splits.long_tail_keep(labels, seed=0)
    np.testing.assert_array_equal(again, kept)
    np.testing.assert_array_equal(tail_again, tail)


def write_training_set(folder: Path, names, per_class: int = 4) -> None:
    """Tiny TFRecords (4x4 images) of identities `names`, labels in sorted-name order as tools.make_tfrecords."""
    with ShardedTFRecordWriter(folder, examples_per_shard=7, class_names=names) as writer:
        for label, name in enumerate(names):
            for index in range(per_class):
                image = np.full((4, 4, 3), 10 * label + index, np.uint8)
                writer.write(schema.make_example(image, label, landmarks=np.zeros((5, 2)),
                                                 source_id=f"{name}/frontal/{index + 1:02d}.png"))


def records(folder: Path):
    return [(ex.features.feature["label"].int64_list.value[0], ex.features.feature["true_label"].int64_list.value[0],
             ex.features.feature["source_id"].bytes_list.value[0].decode()) for ex in splits.read_records(folder)]


def test_written_noisy_split_relabels_records_and_lists_them(tmp_path):
    names = ["001", "002", "150", "299", "300"]
    write_training_set(tmp_path / "train", names)
    noisy = splits.write_noisy(tmp_path / "train", tmp_path / "noisy", tmp_path / "noisy20.csv", 0.2, seed=0)
    written = records(tmp_path / "noisy")
    assert [label for label, _, _ in written] == list(noisy)
    assert [true for _, true, _ in written] == list(np.repeat(np.arange(5), 4))
    with open(tmp_path / "noisy20.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert len(listed) == 4  # round(0.2 * 20)
    by_path = {path: (names[label], names[true]) for label, true, path in written}
    for row in listed:
        assert by_path[row["path"]] == (row["noisy_class"], row["true_class"])
        assert row["noisy_class"] != row["true_class"]
    description = read_description(tmp_path / "noisy")
    assert description["class_names"] == names and description["has"]["true_label"]
    assert description["has"]["landmarks"]
    splits.write_noisy(tmp_path / "train", tmp_path / "again", tmp_path / "again.csv", 0.2, seed=0)
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "noisy20.csv").read_text()
    assert records(tmp_path / "again") == written


def test_written_long_tail_split_keeps_its_list(tmp_path):
    names = ["001", "002", "003", "004"]
    write_training_set(tmp_path / "train", names, per_class=5)
    kept = splits.write_long_tail(tmp_path / "train", tmp_path / "tail", tmp_path / "longtail.csv", seed=0)
    written = records(tmp_path / "tail")
    assert len(written) == kept.sum() == 2 * 2 + 2 * 5
    assert all(label == true for label, true, _ in written)
    with open(tmp_path / "longtail.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert [row["path"] for row in listed] == [path for _, _, path in written]
    tail_counts = {}
    for row in listed:
        tail_counts.setdefault(row["class"], []).append(int(row["tail"]))
    assert sorted(len(flags) for flags in tail_counts.values()) == [2, 2, 5, 5]
    assert all(flags == [1, 1] for flags in tail_counts.values() if len(flags) == 2)


@pytest.mark.parametrize("split", ["train_noisy20", "train_noisy40", "train_longtail"])
def test_prepared_cfp_splits_hold_only_training_identities(split):
    """On the prepared CFP data (python -m experiments.real_faces.prepare_cfp): every class name and every image's
    own identity of a split lies in 001-300, none in folds 6 and 7."""
    folder = Path("data/cfp") / split
    if not (folder / "train.json").is_file():
        pytest.skip(f"{folder} not prepared (python -m experiments.real_faces.prepare_cfp)")
    names = read_description(folder)["class_names"]
    assert {int(name) for name in names} <= set(prepare_cfp.TRAIN_IDENTITIES)
    identities = {int(Path(path).parts[0]) for _, _, path in records(folder)}
    assert identities <= set(prepare_cfp.TRAIN_IDENTITIES) and not identities & HELD_OUT
