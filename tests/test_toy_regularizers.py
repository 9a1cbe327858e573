"""experiments.regularizers.toy: data preparation by hand, and each experiment end to end with one epoch."""
import json
import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from experiments.regularizers import toy


def test_digit_images_are_the_normalised_pixels_replicated_to_three_channels():
    images, labels = toy.digit_images(size=8)  # no resampling at the native size
    digits = load_digits()
    assert images.shape == (1797, 8, 8, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, digits.target)
    expected = (digits.images * 255.0 / 16.0 - 127.5) / 128.0
    for channel in range(3):
        np.testing.assert_allclose(images[..., channel], expected, atol=1e-6)
    upsampled, _ = toy.digit_images()
    assert upsampled.shape == (1797, toy.DIGIT_SIZE, toy.DIGIT_SIZE, 3)
    assert upsampled.min() >= -127.5 / 128 - 1e-6 and upsampled.max() <= 127.5 / 128 + 1e-6


def test_split_and_cut_keep_the_asked_share_of_each_class():
    labels = np.repeat(np.arange(4), [30, 31, 12, 9])
    train, test = toy.split_per_class(labels, test_fraction=1 / 3, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert np.bincount(labels[test]).tolist() == [10, 10, 4, 3]
    cut = toy.cut_classes(train, labels, classes=(1, 3), keep=0.1, seed=0)
    assert set(cut) <= set(train)
    assert np.bincount(labels[cut]).tolist() == [20, math.ceil(2.1), 8, math.ceil(0.6)]


def test_pairwise_angles_of_known_columns():
    kernel = np.array([[1.0, 0.0, -2.0], [0.0, 3.0, 0.0]])
    np.testing.assert_allclose(toy.pairwise_angles(kernel), [90.0, 180.0, 90.0], atol=1e-5)


def test_orl_images_are_forty_people_of_ten(shared_data):
    images, labels = toy.orl_images(shared_data / "orl")
    assert images.shape == (400, toy.FACE_SIZE, toy.FACE_SIZE, 3)
    assert np.bincount(labels).tolist() == [10] * 40
    with pytest.raises(FileNotFoundError, match="no ORL subject folders"):
        toy.orl_images(shared_data)


def test_digits_experiments_run_end_to_end_and_write_their_figures(tmp_path, capsys):
    assert toy.main(["--out", str(tmp_path), "--skip-orl", "--epochs-scale", "0.01"]) == 0
    results = json.loads((tmp_path / "toy_results.json").read_text())
    assert (tmp_path / "toy_cia.png").stat().st_size > 10_000
    assert (tmp_path / "toy_exclusive.png").stat().st_size > 10_000
    assert sorted(path.name for path in tmp_path.iterdir()) == [  # written through temporary files and renames
        "toy_cia.png", "toy_exclusive.png", "toy_results.json"
    ]
    cia = results["cia"]
    assert cia["train_class_sizes"][5:] == [13, 13, 12, 12, 12] and cia["epochs"] == 1
    for run in cia["runs"].values():
        assert 0 <= run["test_accuracy"] <= 1
        assert [row["bucket"] for row in run["center_norm_spread"]][-1] == "all"
    exclusive = results["exclusive"]["runs"]["softmax + exclusive"]
    # The three projected unit columns in 2-D: pairwise angles add up to 360 degrees or to twice the largest.
    angles = sorted(exclusive["angles_deg"])
    assert math.isclose(sum(angles), 360.0, abs_tol=1e-3) or math.isclose(angles[0] + angles[1], angles[2], abs_tol=1e-3)
    assert -1 <= exclusive["sep_mean"] <= 1
    printed = capsys.readouterr().out
    assert "softmax + CIA |" in printed and "random W |" in printed


def test_missing_or_empty_orl_folder_is_one_error_line_before_any_training(tmp_path, capsys):
    missing, empty = tmp_path / "nowhere", tmp_path / "empty"
    empty.mkdir()
    for orl, message in ((missing, f"error: ORL folder not found: {missing}"),
                         (empty, f"error: --orl {empty}: no ORL subject folders s1..s40")):
        assert toy.main(["--out", str(tmp_path / "out"), "--orl", str(orl)]) == 2
        error_lines = capsys.readouterr().err.strip().splitlines()
        assert len(error_lines) == 1 and error_lines[0].startswith(message), error_lines
    assert not (tmp_path / "out" / "toy_results.json").exists()


def test_orl_experiment_compares_with_random_w(shared_data, tmp_path):
    results = toy.orl_exclusive(tmp_path, shared_data / "orl", epochs=1, embedding_size=8)
    assert (tmp_path / "toy_orl_sep.png").is_file()
    assert results["classes"] == 40 and results["train_examples"] == 280
    assert 0 < results["random_sep_mean"] < 1
    assert set(results["runs"]) == {"softmax", "softmax + exclusive"}
