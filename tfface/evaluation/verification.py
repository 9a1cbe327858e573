"""1:1 verification metrics: k-fold accuracy, VAL@FAR, ROC, AUC, EER and TAR@FAR.

The k-fold protocol is insightface's (`recognition/arcface_torch/eval/verification.py`): embeddings are
L2-normalised, a pair is called "same" when its squared L2 distance is below a threshold from
`np.arange(0, 4, 0.01)`; in each of the contiguous folds (sklearn `KFold(n_folds, shuffle=False)`) the threshold
with the best accuracy on the other folds (the smallest one on ties) is applied to the held-out fold, and the
accuracy is reported as mean +- std over folds. VAL@FAR interpolates, on the training folds, the distance threshold
whose false accept rate is the target (grid `np.arange(0, 4, 0.001)`) and measures VAL and FAR on the held-out fold.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
from sklearn import metrics
from sklearn.model_selection import KFold

from tfface.evaluation.embeddings import as_embedding_matrix, l2_normalize, pca_projection

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
REPORTED_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

FoldSplit = Tuple[np.ndarray, np.ndarray]


def as_labels(labels, length: int, name: str = "issame") -> np.ndarray:
    """`labels` (bools or 0/1) as a bool array [length]; anything else raises a ValueError naming `name`."""
    array = np.asarray(labels)
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {array.shape}")
    if array.dtype != bool:
        if not np.all(np.isin(array, (0, 1))):
            raise ValueError(f"{name} must hold booleans or 0/1, got values {np.unique(array)[:5]}")
        array = array.astype(bool)
    return array


def _as_pairs(embeddings1, embeddings2, issame) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    first = as_embedding_matrix(embeddings1, "embeddings1")
    second = as_embedding_matrix(embeddings2, "embeddings2")
    if first.shape != second.shape:
        raise ValueError(f"embeddings1 {first.shape} and embeddings2 {second.shape} differ in shape")
    return first, second, as_labels(issame, len(first))


def _as_scores(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contain NaN or infinite values")
    genuine = as_labels(labels, len(values), "labels")
    if genuine.all() or not genuine.any():
        raise ValueError("labels must contain both genuine (1) and impostor (0) pairs")
    return values, genuine


def _as_thresholds(thresholds) -> np.ndarray:
    values = np.asarray(thresholds, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or np.any(np.diff(values) <= 0):
        raise ValueError("thresholds must be a non-empty, strictly increasing 1-D array")
    return values


def squared_distances(embeddings1, embeddings2) -> np.ndarray:
    """Squared L2 distance of L2-normalised rows: [P, D], [P, D] -> [P], in [0, 4] (= 2 - 2 cos)."""
    first, second = l2_normalize(embeddings1), l2_normalize(embeddings2)
    if first.shape != second.shape:
        raise ValueError(f"embeddings1 {first.shape} and embeddings2 {second.shape} differ in shape")
    return np.sum(np.square(first - second), axis=1)


def fold_splits(n_pairs: int, n_folds: int = 10, folds=None) -> List[FoldSplit]:
    """(train indices, test indices) per fold.

    Without `folds`: contiguous folds of sklearn `KFold(n_folds, shuffle=False)`, and with n_folds == 1 the one
    "fold" trains and tests on everything (insightface's LFold). With `folds` (int fold id per pair, [n_pairs],
    e.g. from LFW's pairs.txt) each distinct id, in increasing order, is one test fold (a single id: as n_folds 1).
    """
    if folds is not None:
        fold_ids = np.asarray(folds)
        if fold_ids.shape != (n_pairs,) or not np.issubdtype(fold_ids.dtype, np.integer):
            raise ValueError(
                f"folds must be an integer array of shape ({n_pairs},), got {fold_ids.dtype} {fold_ids.shape}"
            )
        distinct = np.unique(fold_ids)
        if len(distinct) == 1:
            everything = np.arange(n_pairs)
            return [(everything, everything)]
        return [(np.flatnonzero(fold_ids != fold), np.flatnonzero(fold_ids == fold)) for fold in distinct]
    if not 1 <= n_folds <= n_pairs:
        raise ValueError(f"n_folds must be in [1, number of pairs = {n_pairs}], got {n_folds}")
    indices = np.arange(n_pairs)
    if n_folds == 1:
        return [(indices, indices)]
    return list(KFold(n_splits=n_folds, shuffle=False).split(indices))


def rates_at_thresholds(distances, issame, thresholds) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TPR, FPR, accuracy), each [T], of the rule "same iff distance < threshold" for each of T thresholds.

    distances [P], issame bool [P]. A rate whose denominator is empty is 0 (as in insightface).
    """
    distances = np.asarray(distances, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    same_distances = np.sort(distances[issame])
    diff_distances = np.sort(distances[~issame])
    true_accepts = np.searchsorted(same_distances, thresholds, side="left")
    false_accepts = np.searchsorted(diff_distances, thresholds, side="left")
    n_same, n_diff = len(same_distances), len(diff_distances)
    tpr = true_accepts / n_same if n_same else np.zeros(len(thresholds))
    fpr = false_accepts / n_diff if n_diff else np.zeros(len(thresholds))
    accuracy = (true_accepts + n_diff - false_accepts) / len(distances)
    return tpr, fpr, accuracy


def _fold_distances(first, second, train, n_pca_components: int) -> np.ndarray:
    """Squared distances [P] for one fold; with n_pca_components > 0, of the L2-normalised embeddings projected by
    a PCA fitted on the fold's training pairs (and normalised again)."""
    if n_pca_components == 0:
        return squared_distances(first, second)
    first, second = l2_normalize(first), l2_normalize(second)
    project = pca_projection(np.concatenate([first[train], second[train]]), n_pca_components)
    return np.sum(np.square(project(first) - project(second)), axis=1)


def kfold_accuracy(
    embeddings1,
    embeddings2,
    issame,
    n_folds: int = 10,
    folds=None,
    thresholds=ACCURACY_THRESHOLDS,
    pca_components: int = 0,
) -> Dict[str, np.ndarray]:
    """insightface's `calculate_roc`: k-fold verification accuracy on squared L2 distance.

    embeddings1, embeddings2: [P, D] (L2-normalised here); issame: bool [P]; folds: optional fold id per pair
    (see `fold_splits`); pca_components > 0 fits PCA in each fold on the training pairs' embeddings only.
    Returns {"accuracies": [F] held-out accuracy per fold, "thresholds": [F] distance threshold chosen per fold,
    "tpr", "fpr": [T] held-out rates per threshold averaged over folds (the ROC curve)}.
    """
    first, second, issame = _as_pairs(embeddings1, embeddings2, issame)
    thresholds = _as_thresholds(thresholds)
    accuracies, best_thresholds, tprs, fprs = [], [], [], []
    for train, test in fold_splits(len(issame), n_folds, folds):
        distances = _fold_distances(first, second, train, pca_components)
        _, _, train_accuracy = rates_at_thresholds(distances[train], issame[train], thresholds)
        best = thresholds[np.argmax(train_accuracy)]
        tpr, fpr, _ = rates_at_thresholds(distances[test], issame[test], thresholds)
        _, _, test_accuracy = rates_at_thresholds(distances[test], issame[test], [best])
        accuracies.append(test_accuracy[0])
        best_thresholds.append(best)
        tprs.append(tpr)
        fprs.append(fpr)
    return {
        "accuracies": np.array(accuracies),
        "thresholds": np.array(best_thresholds),
        "tpr": np.mean(tprs, axis=0),
        "fpr": np.mean(fprs, axis=0),
    }


def threshold_at_far(fars, thresholds, far_target: float) -> float:
    """Distance threshold at which the false accept rate reaches `far_target`, by linear interpolation.

    fars [T]: non-decreasing FAR at each of the increasing `thresholds` [T]. Where FAR repeats, a target equal to
    a repeated value gives the largest threshold with that FAR, and a target between two FAR levels interpolates
    between the last threshold of the lower level and the first of the upper one: the value of insightface's
    `interp1d(fars, thresholds, kind="slinear")` on the scipy releases that accept repeated x (newer ones raise).
    """
    fars = np.asarray(fars, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    lower = int(np.searchsorted(fars, far_target, side="right")) - 1
    if lower < 0:
        raise ValueError(f"far_target {far_target} is below the FAR {fars[0]} at the smallest threshold")
    if lower == len(fars) - 1 or fars[lower] == far_target:
        return float(thresholds[lower])
    weight = (far_target - fars[lower]) / (fars[lower + 1] - fars[lower])
    return float(thresholds[lower] + weight * (thresholds[lower + 1] - thresholds[lower]))


def val_at_far(
    embeddings1,
    embeddings2,
    issame,
    far_target: float = 1e-3,
    n_folds: int = 10,
    folds=None,
    thresholds=VAL_THRESHOLDS,
) -> Tuple[float, float, float]:
    """insightface's `calculate_val`: (VAL mean, VAL std, FAR mean) over folds at a target FAR.

    In each fold the threshold reaching `far_target` on the training pairs is interpolated (`threshold_at_far`;
    0 when the training FAR never reaches the target) and VAL (true accept rate) and FAR are measured on the
    held-out pairs. embeddings [P, D], issame bool [P]; every held-out fold needs matched and mismatched pairs.
    """
    first, second, issame = _as_pairs(embeddings1, embeddings2, issame)
    thresholds = _as_thresholds(thresholds)
    distances = squared_distances(first, second)
    vals, fars = [], []
    for fold, (train, test) in enumerate(fold_splits(len(issame), n_folds, folds)):
        if issame[test].all() or not issame[test].any():
            raise ValueError(f"fold {fold} needs both matched and mismatched pairs to measure VAL and FAR")
        _, train_fars, _ = rates_at_thresholds(distances[train], issame[train], thresholds)
        threshold = threshold_at_far(train_fars, thresholds, far_target) if train_fars.max() >= far_target else 0.0
        val, far, _ = rates_at_thresholds(distances[test], issame[test], [threshold])
        vals.append(val[0])
        fars.append(far[0])
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def roc_curve(scores, labels) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) of "genuine iff score >= threshold" (sklearn.metrics.roc_curve).

    scores [P]: similarities, higher = more alike (e.g. cosine); labels [P]: 1 genuine, 0 impostor.
    """
    values, genuine = _as_scores(scores, labels)
    return metrics.roc_curve(genuine, values)


def area_under_roc(scores, labels) -> float:
    """Area under the ROC curve of similarity scores [P] with labels [P] (sklearn.metrics.auc)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(metrics.auc(fpr, tpr))


def equal_error_rate(scores, labels) -> float:
    """Rate at which false accepts equal false rejects, on the linearly interpolated ROC curve of scores [P]."""
    fpr, tpr, _ = roc_curve(scores, labels)
    gap = (1.0 - tpr) - fpr
    crossing = int(np.flatnonzero(gap <= 0)[0])
    if crossing == 0 or gap[crossing] == 0:
        return float(fpr[crossing])
    weight = gap[crossing - 1] / (gap[crossing - 1] - gap[crossing])
    return float(fpr[crossing - 1] + weight * (fpr[crossing] - fpr[crossing - 1]))


def tar_at_far(scores, labels, fars: Sequence[float] = REPORTED_FARS) -> Dict[float, float]:
    """IJB-style TAR@FAR table from similarity scores [P] and labels [P] (1 genuine, 0 impostor).

    For each FAR the threshold is the (1 - FAR) empirical quantile of the impostor scores (inverse CDF: with n
    impostors, the (floor(FAR n) + 1)-th highest), so at most FAR n impostors score above it; TAR is the fraction
    of genuine scores strictly above the threshold. Returns {far: tar}.
    """
    values, genuine = _as_scores(scores, labels)
    impostor_descending = np.sort(values[~genuine])[::-1]
    genuine_scores = values[genuine]
    table = {}
    for far in fars:
        if not 0.0 <= far < 1.0:
            raise ValueError(f"each FAR must be in [0, 1), got {far}")
        # The epsilon keeps products like 0.29 * 100 = 28.999999999999996 at 29.
        allowed_false_accepts = int(np.floor(far * len(impostor_descending) + 1e-9))
        threshold = impostor_descending[min(allowed_false_accepts, len(impostor_descending) - 1)]
        table[far] = float(np.mean(genuine_scores > threshold))
    return table


def evaluate_pairs(
    embeddings1,
    embeddings2,
    issame,
    n_folds: int = 10,
    folds=None,
    pca_components: int = 0,
    far_target: float = 1e-3,
    fars: Sequence[float] = REPORTED_FARS,
) -> Dict[str, object]:
    """All verification numbers for embedding pairs [P, D], [P, D] with issame bool [P].

    accuracy_mean / accuracy_std over folds and best_threshold (mean over folds of the chosen squared-L2
    threshold) from `kfold_accuracy` (the only numbers `pca_components` affects, as in insightface); val, val_std, far from `val_at_far` at `far_target`; auc, eer and
    tar_at_far ({far: tar}) from the cosine similarities of all pairs; fold_accuracies [F] as well.
    """
    first, second, issame = _as_pairs(embeddings1, embeddings2, issame)
    kfold = kfold_accuracy(first, second, issame, n_folds=n_folds, folds=folds, pca_components=pca_components)
    val, val_std, far = val_at_far(first, second, issame, far_target=far_target, n_folds=n_folds, folds=folds)
    cosines = 1.0 - squared_distances(first, second) / 2.0
    return {
        "accuracy_mean": float(np.mean(kfold["accuracies"])),
        "accuracy_std": float(np.std(kfold["accuracies"])),
        "best_threshold": float(np.mean(kfold["thresholds"])),
        "fold_accuracies": kfold["accuracies"],
        "auc": area_under_roc(cosines, issame),
        "eer": equal_error_rate(cosines, issame),
        "val": val,
        "val_std": val_std,
        "far": far,
        "tar_at_far": tar_at_far(cosines, issame, fars),
    }
