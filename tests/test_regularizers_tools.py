"""experiments.regularizers.separability and experiments.regularizers.center_norms: statistics against loops and closed forms, and both CLIs on a run."""
import json
from pathlib import Path

import numpy as np
import pytest

from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from experiments.regularizers import center_norms, separability
from trainers.train import main as train_main


# ----------------------------------------------------------------------------------------------- separability
def loop_separability(kernel):
    count = kernel.shape[1]
    return np.array([
        max(
            kernel[:, i] @ kernel[:, j] / (np.linalg.norm(kernel[:, i]) * np.linalg.norm(kernel[:, j]))
            for j in range(count) if j != i
        )
        for i in range(count)
    ])


def test_separability_matches_pairwise_loops_also_in_row_blocks(monkeypatch):
    kernel = np.random.default_rng(0).normal(size=(5, 7))
    expected = loop_separability(kernel)
    np.testing.assert_allclose(separability.separability(kernel), expected, rtol=1e-5)
    monkeypatch.setattr(separability, "ROW_BLOCK", 3)
    np.testing.assert_allclose(separability.separability(kernel), expected, rtol=1e-5)


def test_separability_of_a_regular_simplex_is_minus_one_over_c_minus_one():
    # The 4 vertices of a regular tetrahedron, with different lengths: all pairwise cosines are -1/3.
    vertices = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float).T * np.array([1, 2, 3, 4])
    np.testing.assert_allclose(separability.separability(vertices), -1 / 3, rtol=1e-6)


def test_random_reference_closed_forms():
    # Two classes: Sep_1 = Sep_2, so std(Sep) is 0; W and the sign-flipped W are equally likely, so E[cos] = 0.
    mean, std = separability.random_separability(2, 2, draws=4000, seed=1)
    assert std == 0.0
    assert abs(mean) < 0.03
    # 1-D, three classes: Sep_i = +1 with a same-sign neighbour, else -1. Signs split 3/0 (p = 1/4, mean 1) or
    # 2/1 (p = 3/4, mean 1/3): E[mean(Sep)] = 1/2.
    mean, _ = separability.random_separability(1, 3, draws=4000, seed=2)
    assert abs(mean - 0.5) < 0.03
    with pytest.raises(ValueError, match="draws must be >= 1"):
        separability.random_separability(2, 3, draws=0)


def test_bad_kernels_are_named(tmp_path):
    with pytest.raises(ValueError, match="C >= 2"):
        separability.separability(np.ones((4, 1)))
    with pytest.raises(ValueError, match=r"all-zero columns \(classes \[1\]\)"):
        separability.separability(np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(FileNotFoundError, match="head.weights.npz"):
        separability.load_kernel(tmp_path)
    np.save(tmp_path / "vector.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"vector.npy: the kernel must be \[D, C\]"):
        separability.load_kernel(tmp_path / "vector.npy")


def test_separability_cli_reads_a_head_npz(tmp_path, capsys):
    kernel = np.random.default_rng(3).normal(size=(6, 9)).astype("float32")
    np.savez(tmp_path / "head.weights.npz", kernel, np.zeros(9, "float32"))
    assert separability.main([str(tmp_path), "--json", "--draws", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = loop_separability(kernel.astype(float))
    assert (report["dim"], report["classes"]) == (6, 9)
    np.testing.assert_allclose([report["mean"], report["std"]], [expected.mean(), expected.std()], rtol=1e-5)
    assert 0 < report["random_mean"] < 1
    assert separability.main([str(tmp_path / "nowhere.npz")]) == 2
    assert "error: head weights not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- center norms
def test_class_centers_are_per_class_means():
    rng = np.random.default_rng(4)
    embeddings, labels = rng.normal(size=(9, 2)), np.array([0, 2, 2, 0, 2, 0, 0, 2, 2])
    centers, counts = center_norms.class_centers(embeddings, labels, 4)
    np.testing.assert_array_equal(counts, [4, 0, 5, 0])
    np.testing.assert_allclose(centers[0], embeddings[[0, 3, 5, 6]].mean(axis=0))
    np.testing.assert_allclose(centers[2], embeddings[[1, 2, 4, 7, 8]].mean(axis=0))
    np.testing.assert_array_equal(centers[[1, 3]], 0.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        center_norms.class_centers(embeddings, labels, 2)


def test_spread_by_class_size_bucket_by_hand():
    # Norms 1, 2, 3, 4 (along different axes); sizes 10, 10, 100, 100: median 55 splits small from large.
    centers = np.array([[1.0, 0.0], [0.0, -2.0], [3.0, 0.0], [0.0, 4.0]])
    rows = center_norms.center_norm_spread(centers, np.array([10, 10, 100, 100]))
    assert [row["bucket"] for row in rows] == ["[10, 55)", "[55, 101)", "all"]
    small, large, everything = rows
    assert small["classes"] == 2 and small["mean"] == 1.5 and small["std"] == 0.5 and small["range"] == 1.0
    np.testing.assert_allclose(small["relative_std"], 1 / 3)
    np.testing.assert_allclose([large["mean"], large["relative_std"]], [3.5, 0.5 / 3.5])
    np.testing.assert_allclose([everything["std"], everything["min"], everything["max"]], [np.sqrt(1.25), 1, 4])
    explicit = center_norms.center_norm_spread(centers, np.array([10, 10, 100, 100]), edges=[0, 50, 1000, 5000])
    assert [row["bucket"] for row in explicit] == ["[0, 50)", "[50, 1000)", "all"]  # the empty bucket is left out
    with pytest.raises(ValueError, match="edges must be at least two increasing"):
        center_norms.center_norm_spread(centers, np.ones(4), edges=[5, 1])


NUM_CLASSES = 3


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-epoch run of the tiny backbone on 3 identities x 8 images (the first identity x 2 more)."""
    root = tmp_path_factory.mktemp("center_norms")
    rng = np.random.default_rng(0)
    with ShardedTFRecordWriter(root / "data", prefix="train") as writer:
        for label, count in enumerate((16, 8, 8)):
            for _ in range(count):
                image = rng.integers(0, 60, size=(16, 16, 3)).astype(np.uint8)
                image[:, 5 * label : 5 * label + 5] = 230
                writer.write(make_example(image, label))
    config = root / "config.yaml"
    config.write_text(
        f"backbone: {{name: tiny, options: {{embedding_size: 4}}}}\nhead: {{name: softmax}}\n"
        f"data: {{train: {root / 'data'}, shuffle_buffer: 32}}\ntrain: {{epochs: 1, batch_size: 8, verbose: 0}}\n"
        f"schedule: {{name: constant, learning_rate: 0.05}}\n"
        f"regularizers: [{{name: center_invariant, weight: 0.001}}, {{name: exclusive, weight: 1.0}}]\n"
        f"work_dir: {root / 'run'}\n"
    )
    assert train_main(["--config", str(config)]) == 0
    return root


def test_center_norms_cli_embeds_the_run_training_set(trained_run, capsys):
    capsys.readouterr()
    assert center_norms.main([str(trained_run / "run"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    embeddings, labels = center_norms.embed_data_set(trained_run / "run", trained_run / "data")
    assert embeddings.shape == (32, 4) and np.bincount(labels).tolist() == [16, 8, 8]
    norms = np.linalg.norm([embeddings[labels == k].mean(axis=0) for k in range(NUM_CLASSES)], axis=1)
    assert [row["bucket"] for row in rows] == ["[8, 17)", "all"]  # median size 8 = smallest: one bucket
    np.testing.assert_allclose(rows[-1]["mean"], norms.mean(), rtol=1e-4)
    np.testing.assert_allclose(rows[-1]["relative_std"], norms.std() / norms.mean(), rtol=1e-4)


def test_separability_cli_on_a_regularface_run_sees_unit_columns(trained_run, capsys):
    kernel = separability.load_kernel(trained_run / "run")
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)  # the exclusive projection
    assert separability.main([str(trained_run / "run")]) == 0
    assert "trained" in capsys.readouterr().out


def test_center_norms_cli_errors_are_one_line(tmp_path, capsys):
    assert center_norms.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no config.yaml (is it the work dir of a training run?)"
