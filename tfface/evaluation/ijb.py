"""IJB-B / IJB-C 1:1 template verification, as insightface's `eval_ijbc.py`.

Published meta files (prefix `ijbb_` or `ijbc_`), one image per line, in the same image order:
- `<prefix>face_tid_mid.txt`: `image_name template_id media_id`
- `<prefix>name_5pts_score.txt`: `image_name x1 y1 ... x5 y5 detector_score`
- `<prefix>template_pair_label.txt`: `template_id_1 template_id_2 label` (1 genuine, 0 impostor)
A template is the sum over its medias of the mean of that media's image features, L2-normalised; image features
may first be weighted by their detector score, and keep their norm unless `use_norm_score` is False. The score of
a template pair is the cosine of the two templates.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from tfface.evaluation.embeddings import as_embedding_matrix, l2_normalize
from tfface.evaluation.verification import REPORTED_FARS, area_under_roc, as_labels, tar_at_far

IJB_DATASETS = ("ijbb", "ijbc")


@dataclass(frozen=True)
class IJBMeta:
    """IJB meta data. Per image [N]: image_names, template_ids, media_ids, landmarks [N, 5, 2] (pixels),
    detector_scores. Per template pair [Q]: pair_templates [Q, 2], pair_labels bool."""

    image_names: Tuple[str, ...]
    template_ids: np.ndarray
    media_ids: np.ndarray
    landmarks: np.ndarray
    detector_scores: np.ndarray
    pair_templates: np.ndarray
    pair_labels: np.ndarray


def _read_table(path: Path, n_columns: int, layout: str, numeric: slice, number_type):
    """Non-empty lines of `path`, each `n_columns` whitespace-separated fields, the `numeric` ones parsed with
    `number_type` -> (first fields [rows], numbers [rows, k], line numbers [rows]); a malformed line raises an
    error naming file and line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file not found: {path}")
    names, numbers, line_numbers = [], [], []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != n_columns:
                    raise ValueError
                numbers.append([number_type(field) for field in fields[numeric]])
            except ValueError:
                raise ValueError(f"{path}, line {line_number}: expected '{layout}', got {line.strip()!r}") from None
            names.append(fields[0])
            line_numbers.append(line_number)
    width = len(range(n_columns)[numeric])
    numbers = np.array(numbers, dtype=np.float64 if number_type is float else np.int64).reshape(-1, width)
    return names, numbers, np.array(line_numbers, dtype=np.int64)


def read_template_media(path) -> Tuple[Tuple[str, ...], np.ndarray, np.ndarray]:
    """`*_face_tid_mid.txt` -> (image names [N], template ids int64 [N], media ids int64 [N])."""
    names, ids, _ = _read_table(Path(path), 3, "image_name template_id media_id", slice(1, 3), int)
    return tuple(names), ids[:, 0], ids[:, 1]


def read_landmarks_scores(path) -> Tuple[Tuple[str, ...], np.ndarray, np.ndarray]:
    """`*_name_5pts_score.txt` -> (image names [N], landmarks float32 [N, 5, 2], detector scores float32 [N])."""
    layout = "image_name x1 y1 ... x5 y5 detector_score"
    names, numbers, _ = _read_table(Path(path), 12, layout, slice(1, 12), float)
    numbers = numbers.astype(np.float32)
    return tuple(names), numbers[:, :10].reshape(-1, 5, 2), numbers[:, 10]


def read_template_pairs(path) -> Tuple[np.ndarray, np.ndarray]:
    """`*_template_pair_label.txt` -> (template id pairs int64 [Q, 2], labels bool [Q])."""
    path = Path(path)
    _, numbers, line_numbers = _read_table(path, 3, "template_id_1 template_id_2 label", slice(0, 3), int)
    bad = np.flatnonzero(~np.isin(numbers[:, 2], (0, 1)))
    if len(bad):
        raise ValueError(f"{path}, line {line_numbers[bad[0]]}: label must be 0 or 1, got {numbers[bad[0], 2]}")
    return numbers[:, :2], numbers[:, 2].astype(bool)


def read_ijb_meta(meta_dir, dataset: str = "ijbc") -> IJBMeta:
    """Reads the three meta files of `dataset` ("ijbb" or "ijbc") from `meta_dir` and checks their image order."""
    if dataset not in IJB_DATASETS:
        raise ValueError(f"dataset must be one of {IJB_DATASETS}, got {dataset!r}")
    meta_dir = Path(meta_dir)
    media_path = meta_dir / f"{dataset}_face_tid_mid.txt"
    landmark_path = meta_dir / f"{dataset}_name_5pts_score.txt"
    names, template_ids, media_ids = read_template_media(media_path)
    landmark_names, landmarks, detector_scores = read_landmarks_scores(landmark_path)
    if len(names) != len(landmark_names):
        raise ValueError(f"{media_path} lists {len(names)} images but {landmark_path} lists {len(landmark_names)}")
    for line_index, (name, landmark_name) in enumerate(zip(names, landmark_names)):
        if name != landmark_name:
            raise ValueError(
                f"image order differs at data line {line_index + 1}: {name!r} in {media_path}, "
                f"{landmark_name!r} in {landmark_path}"
            )
    pair_templates, pair_labels = read_template_pairs(meta_dir / f"{dataset}_template_pair_label.txt")
    return IJBMeta(names, template_ids, media_ids, landmarks, detector_scores, pair_templates, pair_labels)


def template_features(
    image_features,
    template_ids,
    media_ids,
    detector_scores=None,
    use_norm_score: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Pools image features [N, D] into L2-normalised template features.

    Each image feature is L2-normalised first unless `use_norm_score`, then multiplied by its detector score
    [N] when given; per template, images of one media are averaged and the media features summed.
    Returns (template features float64 [T, D], template ids [T] in increasing order).
    """
    features = as_embedding_matrix(image_features, "image_features").astype(np.float64)
    template_ids = np.asarray(template_ids)
    media_ids = np.asarray(media_ids)
    if template_ids.shape != (len(features),) or media_ids.shape != (len(features),):
        raise ValueError(
            f"template_ids {template_ids.shape} and media_ids {media_ids.shape} must both be ({len(features)},)"
        )
    if not use_norm_score:
        features = l2_normalize(features)
    if detector_scores is not None:
        detector_scores = np.asarray(detector_scores, dtype=np.float64)
        if detector_scores.shape != (len(features),):
            raise ValueError(f"detector_scores must have shape ({len(features)},), got {detector_scores.shape}")
        features = features * detector_scores[:, None]
    unique_templates, template_index = np.unique(template_ids, return_inverse=True)
    _, media_index = np.unique(np.stack([template_index, media_ids], axis=1), axis=0, return_inverse=True)
    media_index = media_index.reshape(-1)
    media_sums = np.zeros((media_index.max() + 1, features.shape[1]))
    np.add.at(media_sums, media_index, features)
    media_means = media_sums / np.bincount(media_index)[:, None]
    media_template = np.zeros(len(media_means), dtype=np.int64)
    media_template[media_index] = template_index
    templates = np.zeros((len(unique_templates), features.shape[1]))
    np.add.at(templates, media_template, media_means)
    return l2_normalize(templates), unique_templates


def template_pair_scores(templates, template_ids, pair_templates) -> np.ndarray:
    """Cosine similarity [Q] of template pairs [Q, 2] (ids), given L2-normalised templates [T, D] with ids [T]."""
    templates = as_embedding_matrix(templates, "templates")
    template_ids = np.asarray(template_ids)
    pair_templates = np.asarray(pair_templates)
    if pair_templates.ndim != 2 or pair_templates.shape[1] != 2:
        raise ValueError(f"pair_templates must have shape [Q, 2], got {pair_templates.shape}")
    order = np.argsort(template_ids)
    sorted_ids = template_ids[order]
    position = np.clip(np.searchsorted(sorted_ids, pair_templates), 0, len(sorted_ids) - 1)
    missing = sorted_ids[position] != pair_templates
    if missing.any():
        raise ValueError(f"template pairs name template ids with no images, e.g. {pair_templates[missing][0]}")
    rows = order[position]
    return np.einsum("qd,qd->q", templates[rows[:, 0]], templates[rows[:, 1]])


def evaluate_ijb(
    image_features,
    meta: IJBMeta,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    fars: Sequence[float] = REPORTED_FARS,
) -> Dict[str, object]:
    """IJB 1:1 verification of image features [N, D] (in the meta files' image order, flip-fused unnormalised).

    Returns {"tar_at_far": {far: tar}, "auc": float, "scores": [Q] template pair cosines}.
    """
    features = as_embedding_matrix(image_features, "image_features")
    if len(features) != len(meta.image_names):
        raise ValueError(
            f"image_features has {len(features)} rows but the meta files list {len(meta.image_names)} images"
        )
    templates, template_ids = template_features(
        features,
        meta.template_ids,
        meta.media_ids,
        detector_scores=meta.detector_scores if use_detector_score else None,
        use_norm_score=use_norm_score,
    )
    scores = template_pair_scores(templates, template_ids, meta.pair_templates)
    labels = as_labels(meta.pair_labels, len(scores), "pair_labels")
    return {"tar_at_far": tar_at_far(scores, labels, fars), "auc": area_under_roc(scores, labels), "scores": scores}
