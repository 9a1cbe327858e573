"""Face recognition evaluation: 1:1 verification (k-fold, VAL@FAR, ROC, TAR@FAR), IJB templates, rank-k
identification with distractors, flip-test embeddings and benchmark readers."""
from tfface.evaluation.embeddings import combine_flip, flip_test_embeddings, l2_normalize, pca_projection
from tfface.evaluation.identification import count_distractors_above_mate, identification_rates, probe_mate_pairs
from tfface.evaluation.ijb import IJBMeta, evaluate_ijb, read_ijb_meta, template_features, template_pair_scores
from tfface.evaluation.readers import PairList, load_bin, load_images, read_cfp_pairs, read_lfw_pairs, read_pairs_csv
from tfface.evaluation.verification import (
    area_under_roc,
    equal_error_rate,
    evaluate_pairs,
    kfold_accuracy,
    roc_curve,
    squared_distances,
    tar_at_far,
    val_at_far,
)

__all__ = [
    "IJBMeta",
    "PairList",
    "area_under_roc",
    "combine_flip",
    "count_distractors_above_mate",
    "equal_error_rate",
    "evaluate_ijb",
    "evaluate_pairs",
    "flip_test_embeddings",
    "identification_rates",
    "kfold_accuracy",
    "l2_normalize",
    "load_bin",
    "load_images",
    "pca_projection",
    "probe_mate_pairs",
    "read_cfp_pairs",
    "read_ijb_meta",
    "read_lfw_pairs",
    "read_pairs_csv",
    "roc_curve",
    "squared_distances",
    "tar_at_far",
    "template_features",
    "template_pair_scores",
    "val_at_far",
]
