"""Embedding post-processing for evaluation: L2 normalisation, flip-test fusion and fold-wise PCA.

Flip test: each face is embedded twice, as is and mirrored left-right. insightface sums the two embeddings; the
center-invariant loss and RegularFace papers concatenate them (512 -> 1024). Either way the result is
L2-normalised before cosine / squared-L2 comparison. The center-invariant paper also applies PCA, fitted in each
fold on the training folds' embeddings only.
"""
from typing import Callable

import numpy as np
from sklearn.decomposition import PCA

FLIP_MODES = ("sum", "concat")


def as_embedding_matrix(embeddings, name: str = "embeddings") -> np.ndarray:
    """`embeddings` as a float array [N, D]; anything else raises a ValueError naming `name`."""
    matrix = np.asarray(embeddings)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.floating):
        matrix = matrix.astype(np.float64)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def l2_normalize(embeddings, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm: [N, D] -> [N, D] (same float dtype; all-zero rows stay zero)."""
    matrix = as_embedding_matrix(embeddings)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, eps)


def combine_flip(embeddings, flipped_embeddings, mode: str = "sum", normalize: bool = True) -> np.ndarray:
    """Fuses embeddings of images [N, D] and of their mirrored copies [N, D].

    mode "sum" -> [N, D] (insightface), "concat" -> [N, 2D] (center-invariant loss, RegularFace). With
    `normalize` the rows are L2-normalised; IJB norm weighting needs `normalize=False` to keep the feature norm.
    """
    if mode not in FLIP_MODES:
        raise ValueError(f"flip mode must be one of {FLIP_MODES}, got {mode!r}")
    plain = as_embedding_matrix(embeddings, "embeddings")
    flipped = as_embedding_matrix(flipped_embeddings, "flipped_embeddings")
    if plain.shape != flipped.shape:
        raise ValueError(f"embeddings {plain.shape} and flipped_embeddings {flipped.shape} differ in shape")
    fused = plain + flipped if mode == "sum" else np.concatenate([plain, flipped], axis=1)
    return l2_normalize(fused) if normalize else fused


def flip_test_embeddings(
    embed_fn: Callable, images, batch_size: int = 64, mode: str = "sum", normalize: bool = True
) -> np.ndarray:
    """Embeds images [N, H, W, C] and their left-right mirrors with `embed_fn` ([B, H, W, C] -> [B, D]), fused.

    Images are passed to `embed_fn` unchanged (any pixel scaling is the caller's); returns [N, D] or [N, 2D].
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be a 4-D array [N, H, W, C], got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plain, flipped = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        plain.append(np.asarray(embed_fn(batch)))
        flipped.append(np.asarray(embed_fn(batch[:, :, ::-1])))
    return combine_flip(np.concatenate(plain), np.concatenate(flipped), mode=mode, normalize=normalize)


def pca_projection(train_embeddings, n_components: int) -> Callable[[np.ndarray], np.ndarray]:
    """PCA fitted on `train_embeddings` [N, D]; returns a map [M, D] -> [M, n_components], L2-normalised rows.

    The map subtracts the training mean and projects on the leading principal directions (sklearn PCA, as
    insightface's `calculate_roc(pca=...)` does).
    """
    train = as_embedding_matrix(train_embeddings, "train_embeddings")
    if not 1 <= n_components <= min(train.shape):
        raise ValueError(
            f"n_components must be in [1, min(N, D) = {min(train.shape)}] for training embeddings of shape "
            f"{train.shape}, got {n_components}"
        )
    pca = PCA(n_components=n_components).fit(train)

    def project(embeddings) -> np.ndarray:
        return l2_normalize(pca.transform(as_embedding_matrix(embeddings)))

    return project
