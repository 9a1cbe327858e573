"""Verification metrics against numbers worked out by hand and independent numpy / scipy / sklearn computations."""
import numpy as np
import pytest
from scipy.interpolate import BSpline
from sklearn import metrics

from tfface.evaluation import (
    area_under_roc,
    equal_error_rate,
    evaluate_pairs,
    kfold_accuracy,
    squared_distances,
    tar_at_far,
    val_at_far,
)
from tfface.evaluation.verification import (
    REPORTED_FARS,
    fold_splits,
    rates_at_thresholds,
    roc_curve,
    threshold_at_far,
)


def pairs_at_distances(distances):
    """2-D unit embeddings (e1, e2) whose squared L2 distance is each of `distances` (in [0, 4])."""
    distances = np.asarray(distances, dtype=np.float64)
    cosines = 1.0 - distances / 2.0
    first = np.tile([1.0, 0.0], (len(distances), 1))
    second = np.stack([cosines, np.sqrt(1.0 - cosines**2)], axis=1)
    return first, second


# The 20-pair problem (10 folds of 2 consecutive pairs). Easy matched pairs lie at squared distance <= 0.905,
# easy mismatched ones at >= 1.205; the hard ones are hp (matched, 1.605), hn (mismatched, 0.955), and the
# matched 1.005 / mismatched 1.105 sit between. Over all pairs, errors(t) = 2 for t in (0.905, 0.955] and for t in
# (1.005, 1.105], 3 in between, more elsewhere; argmax takes the first grid point, 0.91.
#   fold 0 = (hp, 2.105): train errors 1 at 0.91 and at 1.01 -> 0.91; held out: hp rejected -> 0.5
#   fold 1 = (0.205, hn): train errors 2, 2, 1 -> 1.01;                held out: hn accepted -> 0.5
#   fold 2 = (1.005, 1.105): train errors 1 at 0.91, 2 after -> 0.91;   held out: 1.005 rejected -> 0.5
#   fold 9 = (0.905, 2.005): errors 2 already from t > 0.805 -> 0.81;   held out: 0.905 rejected -> 0.5
#   folds 3..8 (easy pairs): train errors as over all -> 0.91;         held out: both right -> 1.0
HAND_DISTANCES = [1.605, 2.105, 0.205, 0.955, 1.005, 1.105, 0.305, 1.205, 0.405, 1.305,
                  0.505, 1.405, 0.605, 1.705, 0.705, 1.805, 0.805, 1.905, 0.905, 2.005]
HAND_ISSAME = [True, False] * 10
HAND_FOLD_ACCURACIES = [0.5, 0.5, 0.5] + [1.0] * 6 + [0.5]
HAND_FOLD_THRESHOLDS = [0.91, 1.01] + [0.91] * 7 + [0.81]


def test_kfold_accuracy_matches_the_hand_worked_twenty_pair_problem():
    first, second = pairs_at_distances(HAND_DISTANCES)
    result = kfold_accuracy(first, second, HAND_ISSAME, n_folds=10)
    np.testing.assert_allclose(result["accuracies"], HAND_FOLD_ACCURACIES)
    np.testing.assert_allclose(result["thresholds"], HAND_FOLD_THRESHOLDS, atol=1e-12)
    assert np.mean(result["accuracies"]) == pytest.approx(0.8)
    assert np.std(result["accuracies"]) == pytest.approx(np.sqrt(0.06))


def test_kfold_accuracy_with_fold_ids_equals_contiguous_folds_after_shuffling():
    first, second = pairs_at_distances(HAND_DISTANCES)
    order = np.random.default_rng(3).permutation(20)
    folds = np.arange(20)[order] // 2
    result = kfold_accuracy(first[order], second[order], np.array(HAND_ISSAME)[order], folds=folds)
    np.testing.assert_allclose(result["accuracies"], HAND_FOLD_ACCURACIES)


def test_kfold_roc_is_the_mean_of_held_out_rates_computed_with_np_less():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    issame = rng.random(30) < 0.5
    thresholds = np.arange(0, 4, 0.25)
    result = kfold_accuracy(first, second, issame, n_folds=3, thresholds=thresholds)
    unit1 = first / np.linalg.norm(first, axis=1, keepdims=True)
    unit2 = second / np.linalg.norm(second, axis=1, keepdims=True)
    distances = np.sum((unit1 - unit2) ** 2, axis=1)
    tprs, fprs = [], []
    for test in (np.arange(0, 10), np.arange(10, 20), np.arange(20, 30)):
        predicted = np.less(distances[test][None, :], thresholds[:, None])
        actual = issame[test]
        tprs.append((predicted & actual).sum(1) / actual.sum())
        fprs.append((predicted & ~actual).sum(1) / (~actual).sum())
    np.testing.assert_allclose(result["tpr"], np.mean(tprs, 0))
    np.testing.assert_allclose(result["fpr"], np.mean(fprs, 0))


def test_rates_at_thresholds_counts_strictly_below_threshold():
    distances = np.array([0.5, 1.0, 1.0, 2.0])
    issame = np.array([True, True, False, False])
    tpr, fpr, accuracy = rates_at_thresholds(distances, issame, [1.0, 1.5])
    np.testing.assert_allclose(tpr, [0.5, 1.0])
    np.testing.assert_allclose(fpr, [0.0, 0.5])
    np.testing.assert_allclose(accuracy, [0.75, 0.75])


def test_fold_splits_follow_kfold_and_single_fold_uses_everything():
    splits = fold_splits(7, n_folds=3)
    np.testing.assert_array_equal(splits[0][1], [0, 1, 2])
    np.testing.assert_array_equal(splits[2][1], [5, 6])
    np.testing.assert_array_equal(splits[2][0], [0, 1, 2, 3, 4])
    (train, test), = fold_splits(4, n_folds=1)
    np.testing.assert_array_equal(train, test)
    with pytest.raises(ValueError, match="n_folds"):
        fold_splits(4, n_folds=5)


def test_kfold_pca_is_fitted_on_training_folds_only():
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    second[:20] = first[:20] + 0.3 * rng.normal(size=(20, 6))
    issame = np.arange(40) < 20
    order = rng.permutation(40)
    first, second, issame = first[order], second[order], issame[order]
    thresholds = np.arange(0, 4, 0.01)
    result = kfold_accuracy(first, second, issame, n_folds=4, thresholds=thresholds, pca_components=3)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    first, second = unit(first), unit(second)
    expected = []
    for fold in range(4):
        test = np.arange(10 * fold, 10 * fold + 10)
        train = np.setdiff1d(np.arange(40), test)
        train_embeddings = np.concatenate([first[train], second[train]])
        mean = train_embeddings.mean(0)
        _, _, right_vectors = np.linalg.svd(train_embeddings - mean, full_matrices=False)
        project = lambda x: (x - mean) @ right_vectors[:3].T  # noqa: E731
        distances = np.sum((unit(project(first)) - unit(project(second))) ** 2, axis=1)
        train_accuracy = [np.mean((distances[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_accuracy))]
        expected.append(np.mean((distances[test] < best) == issame[test]))
    np.testing.assert_allclose(result["accuracies"], expected)


def old_scipy_slinear(fars, thresholds, target):
    """interp1d(kind='slinear') as scipy < 1.9 built it: a degree-1 B-spline on knots x0, x, x_last."""
    return float(BSpline(np.r_[fars[0], fars, fars[-1]], thresholds, 1)(target))


def test_threshold_at_far_reproduces_slinear_interpolation_with_repeated_fars():
    rng = np.random.default_rng(2)
    thresholds = np.arange(0, 4, 0.01)
    negatives = np.sort(rng.uniform(0.5, 3.0, size=37))
    fars = np.searchsorted(negatives, thresholds, side="left") / len(negatives)
    for target in [1e-3, 0.01, 1 / 37, 0.05, 5 / 37, 0.3, 0.5, 0.9]:
        assert threshold_at_far(fars, thresholds, target) == pytest.approx(old_scipy_slinear(fars, thresholds, target))


def test_threshold_at_far_by_hand():
    fars = np.array([0.0, 0.0, 0.2, 0.2, 0.6])
    thresholds = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert threshold_at_far(fars, thresholds, 0.0) == 1.0
    assert threshold_at_far(fars, thresholds, 0.1) == pytest.approx(1.5)
    assert threshold_at_far(fars, thresholds, 0.2) == 3.0
    assert threshold_at_far(fars, thresholds, 0.5) == pytest.approx(3.75)


# VAL@FAR, 2 folds. Fold A (pairs 0-9), fold B (10-19), alternating matched / mismatched.
# Train on B: mismatched at 0.5003, 1.2343, ... -> FAR 0.2 up to grid 1.234, 0.4 from 1.235; target 0.3 -> 1.2345.
#   Test A: matched below 1.2345: 0.1003, 0.6003, 1.1003 -> VAL 3/5; mismatched: 0.9003 -> FAR 1/5.
# Train on A: mismatched at 0.9003, 1.6003, ... -> FAR 0.2 up to 1.600, 0.4 from 1.601 -> threshold 1.6005.
#   Test B: matched below 1.6005: 0.2007, 0.8007, 1.4007, 1.5507 -> VAL 4/5; mismatched: 0.5003, 1.2343, 1.5007 -> 3/5.
VAL_MATCHED = [0.1003, 0.6003, 1.1003, 1.3003, 1.9003, 0.2007, 0.8007, 1.4007, 1.5507, 2.2007]
VAL_MISMATCHED = [0.9003, 1.6003, 2.1003, 2.6003, 3.1003, 0.5003, 1.2343, 1.5007, 2.0001, 2.5001]


def val_problem():
    distances = np.ravel(np.column_stack([VAL_MATCHED, VAL_MISMATCHED]))
    return (*pairs_at_distances(distances), np.tile([True, False], 10))


def test_val_at_far_matches_the_hand_worked_two_fold_problem():
    first, second, issame = val_problem()
    val, val_std, far = val_at_far(first, second, issame, far_target=0.3, n_folds=2)
    assert val == pytest.approx(0.7)
    assert val_std == pytest.approx(0.1)
    assert far == pytest.approx(0.4)


def test_val_at_far_uses_threshold_zero_when_training_far_never_reaches_the_target():
    first, second, issame = val_problem()
    second[1::2][[0, 5]] = -first[1::2][[0, 5]]  # one antipodal (distance 4, never accepted) mismatch per fold
    val, val_std, far = val_at_far(first, second, issame, far_target=0.9, n_folds=2)
    assert (val, val_std, far) == (0.0, 0.0, 0.0)


def test_tar_at_far_thresholds_at_the_impostor_quantile():
    impostors = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.5, 0.9895, 0.995, 0.98, 0.9995])
    scores = np.concatenate([impostors, genuine])
    labels = np.r_[np.zeros(1000), np.ones(5)]
    table = tar_at_far(scores, labels, fars=(1e-6, 1e-3, 1e-2, 1e-1))
    # FAR 1e-6: 0 impostors may pass -> threshold 0.999; 1e-3: 1 -> 0.998; 1e-2: 10 -> 0.989; 1e-1: 100 -> 0.899.
    assert table == {1e-6: pytest.approx(1 / 5), 1e-3: pytest.approx(1 / 5), 1e-2: pytest.approx(3 / 5),
                     1e-1: pytest.approx(4 / 5)}


def test_auc_equals_the_mann_whitney_pair_count_and_eer_by_hand():
    genuine, impostor = np.array([0.9, 0.8, 0.3, 0.55]), np.array([0.5, 0.2, 0.55, 0.1])
    scores, labels = np.r_[genuine, impostor], np.r_[np.ones(4), np.zeros(4)]
    wins = (genuine[:, None] > impostor[None, :]).sum() + 0.5 * (genuine[:, None] == impostor[None, :]).sum()
    assert area_under_roc(scores, labels) == pytest.approx(wins / 16)
    # Genuine 0.9, 0.8, 0.3; impostor 0.5, 0.2. Accepting the top two: FNR 1/3, FPR 0; accepting 0.5 too:
    # FNR 1/3, FPR 1/2. On that segment FNR = FPR at FPR = 1/3.
    assert equal_error_rate([0.9, 0.8, 0.3, 0.5, 0.2], [1, 1, 1, 0, 0]) == pytest.approx(1 / 3)


def test_evaluate_pairs_on_the_twenty_pair_problem():
    first, second = pairs_at_distances(HAND_DISTANCES)
    result = evaluate_pairs(3.0 * first, second, HAND_ISSAME)  # scale is removed by L2 normalisation
    assert result["accuracy_mean"] == pytest.approx(0.8)
    assert result["accuracy_std"] == pytest.approx(np.sqrt(0.06))  # 4 folds at 0.5, 6 at 1.0
    assert result["best_threshold"] == pytest.approx(0.91)  # (8 x 0.91 + 1.01 + 0.81) / 10
    # Matched pairs closer than mismatched ones: 8 easy x 10 + 1.005 x 9 + 1.605 x 5 = 94 of 100.
    assert result["auc"] == pytest.approx(0.94)
    # Ranked by distance: 8 matched, hn, 1.005 -> at (FPR 0.1, TPR 0.9) FNR = FPR = 0.1.
    assert result["eer"] == pytest.approx(0.1)
    # FAR <= 1e-2: threshold at the closest mismatch (0.955): 8 of 10 matched closer; 1e-1: at 1.105: 9 of 10.
    assert result["tar_at_far"] == pytest.approx({1e-6: 0.8, 1e-5: 0.8, 1e-4: 0.8, 1e-3: 0.8, 1e-2: 0.8, 1e-1: 0.9})
    assert set(result) >= {"val", "val_std", "far"}
    np.testing.assert_allclose(result["fold_accuracies"], HAND_FOLD_ACCURACIES)


def test_squared_distances_of_unit_vectors_are_two_minus_two_cosines():
    rng = np.random.default_rng(4)
    first, second = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    cosines = np.sum(first * second, 1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)
    np.testing.assert_allclose(squared_distances(first, second), 2 - 2 * cosines)


def test_bad_inputs_raise_errors_naming_the_argument():
    first, second = pairs_at_distances(HAND_DISTANCES)
    with pytest.raises(ValueError, match="embeddings2"):
        evaluate_pairs(first, second[:, :1], HAND_ISSAME)
    with pytest.raises(ValueError, match="issame"):
        evaluate_pairs(first, second, HAND_ISSAME[:-1])
    with pytest.raises(ValueError, match="labels"):
        tar_at_far([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="FAR"):
        tar_at_far([0.1, 0.2], [1, 0], fars=(1.5,))
    with pytest.raises(ValueError, match="fold 0"):
        val_at_far(first[:4], second[:4], [True, True, False, False], n_folds=2)


def fixed_score_list():
    """700 genuine and 3,000 impostor similarity scores, rounded to 3 decimals (ties within and across the two
    groups), shuffled; a fixed seed."""
    rng = np.random.default_rng(11)
    genuine = np.round(rng.normal(0.6, 0.15, size=700), 3)
    impostor = np.round(rng.normal(0.1, 0.15, size=3000), 3)
    order = rng.permutation(3700)
    return np.r_[genuine, impostor][order], np.r_[np.ones(700), np.zeros(3000)][order].astype(int)


def test_score_list_metrics_equal_sklearn_roc_curve_and_numpy():
    """ROC, AUC, EER and the TAR@FAR table of a fixed score list against `sklearn.metrics.roc_curve` and plain numpy
    (pairwise counts, brute force over every distinct threshold), not against tfface code."""
    scores, labels = fixed_score_list()
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    reference_fpr, reference_tpr, reference_thresholds = metrics.roc_curve(labels, scores)
    fpr, tpr, thresholds = roc_curve(scores, labels)
    np.testing.assert_array_equal(fpr, reference_fpr)
    np.testing.assert_array_equal(tpr, reference_tpr)
    np.testing.assert_array_equal(thresholds, reference_thresholds)

    # AUC: the trapezoids under sklearn's ROC, and the Mann-Whitney count (ties count one half)
    wins = (genuine[:, None] > impostor[None, :]).sum() + 0.5 * (genuine[:, None] == impostor[None, :]).sum()
    assert area_under_roc(scores, labels) == pytest.approx(np.trapezoid(reference_tpr, reference_fpr), abs=1e-12)
    assert area_under_roc(scores, labels) == pytest.approx(wins / (len(genuine) * len(impostor)), abs=1e-12)

    # EER: where the ROC polyline through every sklearn point crosses FNR = FPR, i.e. fpr + tpr - 1 = 0
    all_fpr, all_tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    gap = all_fpr + all_tpr - 1.0
    segment = int(np.flatnonzero((gap[:-1] <= 0) & (gap[1:] >= 0))[0])
    share = 0.0 if gap[segment] == 0 else -gap[segment] / (gap[segment + 1] - gap[segment])
    expected_eer = all_fpr[segment] + share * (all_fpr[segment + 1] - all_fpr[segment])
    eer = equal_error_rate(scores, labels)
    assert eer == pytest.approx(expected_eer, abs=1e-12)
    assert 0.01 < eer < 0.2

    # TAR@FAR: the best true accept rate of "genuine iff score >= t" over every distinct t (and +inf) that lets at
    # most floor(FAR x impostors) impostors through, once from sklearn's ROC points and once by brute force
    fars = REPORTED_FARS + (0.0123, 0.25)
    table = tar_at_far(scores, labels, fars=fars)
    candidates = np.r_[np.unique(scores), np.inf]
    false_accepts = (impostor[None, :] >= candidates[:, None]).sum(axis=1)
    true_accepts = (genuine[None, :] >= candidates[:, None]).mean(axis=1)
    sklearn_false_accepts = np.rint(all_fpr * len(impostor))
    for far in fars:
        allowed = np.floor(far * len(impostor) + 1e-9)
        assert table[far] == pytest.approx(true_accepts[false_accepts <= allowed].max(), abs=1e-12), far
        assert table[far] == pytest.approx(all_tpr[sklearn_false_accepts <= allowed].max(), abs=1e-12), far
    assert 0 < table[1e-6] < table[1e-2] < table[0.25] < 1


def test_kfold_accuracy_on_600_random_pairs_equals_a_numpy_brute_force():
    rng = np.random.default_rng(12)
    first = rng.normal(size=(600, 8))
    issame = rng.random(600) < 0.5
    second = np.where(issame[:, None], first + 0.9 * rng.normal(size=(600, 8)), rng.normal(size=(600, 8)))
    result = kfold_accuracy(first, second, issame, n_folds=10)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    distances = np.sum((unit(first) - unit(second)) ** 2, axis=1)
    thresholds = np.arange(0, 4, 0.01)
    expected_accuracies, expected_thresholds = [], []
    for test in np.array_split(np.arange(600), 10):
        train = np.setdiff1d(np.arange(600), test)
        train_accuracy = [np.mean((distances[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_accuracy))]
        expected_thresholds.append(best)
        expected_accuracies.append(np.mean((distances[test] < best) == issame[test]))
    np.testing.assert_allclose(result["accuracies"], expected_accuracies)
    np.testing.assert_allclose(result["thresholds"], expected_thresholds)
    assert 0.6 < np.mean(expected_accuracies) < 0.99
