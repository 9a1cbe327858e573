"""Rank-k identification with distractors, MegaFace style.

For each probe the gallery holds exactly one mate (another image of the probe's identity) plus every distractor.
The probe is identified at rank k when fewer than k distractors score strictly above its mate (cosine
similarity). Only the count of such distractors is kept, so the distractor set is streamed in chunks: a million
512-D float32 distractors (2 GB, e.g. a `np.memmap`) never need a [probes, distractors] score matrix in memory.
"""
from typing import Dict, Sequence, Tuple

import numpy as np

from tfface.evaluation.embeddings import as_embedding_matrix, l2_normalize


def probe_mate_pairs(labels) -> Tuple[np.ndarray, np.ndarray]:
    """All ordered (probe, mate) index pairs i != j with labels[i] == labels[j] (MegaFace's FaceScrub protocol).

    labels [N] identity per image -> (probe indices [Q], mate indices [Q]), sorted by probe then mate.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    _, group_of_image = np.unique(labels, return_inverse=True)
    probes, mates = [], []
    for members in np.split(np.argsort(group_of_image, kind="stable"), np.cumsum(np.bincount(group_of_image))[:-1]):
        probe, mate = np.meshgrid(members, members, indexing="ij")
        distinct = probe != mate
        probes.append(probe[distinct])
        mates.append(mate[distinct])
    probes, mates = np.concatenate(probes), np.concatenate(mates)
    order = np.lexsort((mates, probes))
    return probes[order], mates[order]


def count_distractors_above_mate(
    probes, mates, distractors, distractor_chunk: int = 16384, probe_chunk: int = 4096
) -> np.ndarray:
    """Number of distractors scoring strictly above each probe's mate: int64 [P].

    probes [P, D] and mates [P, D] (row i is probe i's mate), distractors [N, D]; rows are L2-normalised here
    and compared by cosine in float32. Work is done on [probe_chunk, distractor_chunk] score blocks.
    """
    probes = l2_normalize(as_embedding_matrix(probes, "probes")).astype(np.float32)
    mates = l2_normalize(as_embedding_matrix(mates, "mates")).astype(np.float32)
    if probes.shape != mates.shape:
        raise ValueError(f"probes {probes.shape} and mates {mates.shape} differ in shape")
    if np.ndim(distractors) != 2 or np.shape(distractors)[1] != probes.shape[1]:
        raise ValueError(f"distractors must be [N, {probes.shape[1]}], got shape {np.shape(distractors)}")
    if distractor_chunk < 1 or probe_chunk < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {distractor_chunk} and {probe_chunk}")
    mate_scores = np.einsum("pd,pd->p", probes, mates)
    counts = np.zeros(len(probes), dtype=np.int64)
    for start in range(0, len(distractors), distractor_chunk):
        chunk = l2_normalize(as_embedding_matrix(distractors[start : start + distractor_chunk], "distractors"))
        chunk = chunk.astype(np.float32)
        for probe_start in range(0, len(probes), probe_chunk):
            rows = slice(probe_start, probe_start + probe_chunk)
            scores = probes[rows] @ chunk.T
            counts[rows] += np.count_nonzero(scores > mate_scores[rows, None], axis=1)
    return counts


def identification_rates(
    probes, mates, distractors, ranks: Sequence[int] = (1, 5, 10), distractor_chunk: int = 16384
) -> Dict[int, float]:
    """Rank-k identification rate for each k in `ranks`: {k: fraction of probes with < k distractors above the mate}.

    probes [P, D], mates [P, D], distractors [N, D] as in `count_distractors_above_mate`.
    """
    if any(rank < 1 for rank in ranks):
        raise ValueError(f"ranks must be >= 1, got {list(ranks)}")
    counts = count_distractors_above_mate(probes, mates, distractors, distractor_chunk=distractor_chunk)
    return {rank: float(np.mean(counts < rank)) for rank in ranks}
