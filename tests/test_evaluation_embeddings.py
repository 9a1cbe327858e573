"""Flip-test fusion and PCA projection against hand / numpy SVD computations."""
import numpy as np
import pytest

from tfface.evaluation import combine_flip, flip_test_embeddings, l2_normalize, pca_projection


def test_l2_normalize_by_hand_and_zero_rows_stay_zero():
    np.testing.assert_allclose(l2_normalize([[3.0, 4.0], [0.0, 0.0]]), [[0.6, 0.8], [0.0, 0.0]])


def test_combine_flip_sums_or_concatenates_then_normalises():
    plain, flipped = np.array([[1.0, 2.0]]), np.array([[2.0, 2.0]])
    np.testing.assert_allclose(combine_flip(plain, flipped, "sum"), [[0.6, 0.8]])
    np.testing.assert_allclose(combine_flip(plain, flipped, "concat"), [[1.0, 2.0, 2.0, 2.0]] / np.sqrt(13.0))
    np.testing.assert_allclose(combine_flip(plain, flipped, "sum", normalize=False), [[3.0, 4.0]])
    with pytest.raises(ValueError, match="flip mode"):
        combine_flip(plain, flipped, "mean")
    with pytest.raises(ValueError, match="flipped_embeddings"):
        combine_flip(plain, flipped[:, :1])


def test_flip_test_embeddings_feeds_mirrored_images_in_batches():
    rng = np.random.default_rng(0)
    images = rng.random((5, 3, 4, 2))
    weights = rng.normal(size=(24, 3))
    calls = []

    def embed(batch):
        calls.append(len(batch))
        return batch.reshape(len(batch), -1) @ weights

    fused = flip_test_embeddings(embed, images, batch_size=2, mode="concat", normalize=False)
    mirrored = images[:, :, ::-1, :]
    expected = np.concatenate([images.reshape(5, -1) @ weights, mirrored.reshape(5, -1) @ weights], axis=1)
    np.testing.assert_allclose(fused, expected)
    assert calls == [2, 2, 2, 2, 1, 1]
    summed = flip_test_embeddings(embed, images, batch_size=4)
    np.testing.assert_allclose(summed, l2_normalize(expected[:, :3] + expected[:, 3:]))


def test_pca_projection_matches_numpy_svd_up_to_component_signs():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(30, 5)) * [5.0, 3.0, 1.0, 0.5, 0.1]
    queries = rng.normal(size=(4, 5))
    project = pca_projection(train, 2)
    mean = train.mean(0)
    _, _, right_vectors = np.linalg.svd(train - mean, full_matrices=False)
    expected = (queries - mean) @ right_vectors[:2].T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    projected = project(queries)
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), atol=1e-10)
    np.testing.assert_allclose(projected @ projected.T, expected @ expected.T, atol=1e-10)
    with pytest.raises(ValueError, match="n_components"):
        pca_projection(train, 6)
