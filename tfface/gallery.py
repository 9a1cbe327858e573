"""A face gallery on disk: unit embeddings with a name and a source photo each, searched by cosine similarity.

    gallery = write_gallery("G", embeddings, names, photos, model={...})   # or append_gallery(...)
    gallery = Gallery.open("G")                       # the embeddings are memory-mapped, not read
    indices, scores = gallery.search(probes, k=5)     # probes [M, D] float32 unit rows -> [M, k], [M, k]

Layout of a gallery folder:

    G/gallery.json            the manifest: format, dtype, embedding size, count, the model, its data files
    G/embeddings-<sha>.npy    float32 [N, D] L2-normalised rows (numpy .npy, memory-mapped by `open`)
    G/entries-<sha>.csv       name,photo: row i names embedding i

The data files are named by a digest of their content and written (atomically, tfface.atomic) before the manifest,
which is replaced last: a reader sees the old gallery or the new one, never a mix, and the same inputs give the
same files byte for byte. Files the new manifest no longer names are removed afterwards. The rows are float32
(1,000,000 x 512: 2.0 GB, mapped, not read): float16 would halve that, but converting its blocks to float32 took
longer than the matrix product itself on our 2 shared cores (numpy has no float16 matrix product).

`search` is a batched matrix product: the index is read in blocks of `block_rows` rows, each (as float32)
multiplied by all probes at once ([M, D] x [D, rows]), and a running top k per probe is kept (`top_k_search`).
"""
import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tfface import atomic
from tfface.errors import ConfigError

MANIFEST = "gallery.json"
FORMAT = "tfface-gallery-1"
DTYPE = np.float32
ENTRY_COLUMNS = ("name", "photo")
DEFAULT_BLOCK_ROWS = 65536
FIRST_BLOCK_ROWS = 1024


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _entries_bytes(names: Sequence[str], photos: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ENTRY_COLUMNS)
    writer.writerows(zip(names, photos))
    return buffer.getvalue().encode("utf-8")


class Gallery:
    """An opened gallery: embeddings (memory-mapped float32 [N, D]), names [N], photos [N], manifest."""

    def __init__(self, folder: Path, manifest: Dict, embeddings: np.ndarray, names: List[str], photos: List[str]):
        self.folder, self.manifest = folder, manifest
        self.embeddings, self.names, self.photos = embeddings, names, photos

    def __len__(self) -> int:
        return len(self.names)

    @property
    def model(self) -> Dict:
        return self.manifest["model"]

    @classmethod
    def open(cls, folder) -> "Gallery":
        """Opens the gallery at `folder`; ConfigError naming the file when it is missing or inconsistent."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ConfigError(f"gallery {folder}: no {MANIFEST} (not a gallery written by tools.gallery build)")
        try:
            manifest = json.loads(manifest_path.read_text())
            embeddings_file, entries_file = folder / manifest["embeddings"], folder / manifest["entries"]
            count, size = int(manifest["count"]), int(manifest["embedding_size"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{manifest_path}: not a gallery manifest ({type(error).__name__}: {error})") from None
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        try:
            embeddings = np.load(embeddings_file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{embeddings_file}: cannot read the embeddings: {error}") from None
        if embeddings.dtype != DTYPE or embeddings.shape != (count, size):
            raise ConfigError(f"{embeddings_file}: expected {np.dtype(DTYPE).name} [{count}, {size}], got "
                              f"{embeddings.dtype} {list(embeddings.shape)}")
        with open(entries_file, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows or tuple(rows[0]) != ENTRY_COLUMNS or len(rows) - 1 != count:
            raise ConfigError(f"{entries_file}: expected the header {','.join(ENTRY_COLUMNS)} and {count} rows")
        return cls(folder, manifest, embeddings, [row[0] for row in rows[1:]], [row[1] for row in rows[1:]])

    def search(self, probes, k: int = 5, block_rows: int = DEFAULT_BLOCK_ROWS) -> Tuple[np.ndarray, np.ndarray]:
        """The k most similar entries of each probe: (indices int64 [M, k'], cosine scores float32 [M, k']), best
        first, k' = min(k, N). probes: float32 [M, D] unit rows."""
        return top_k_search(self.embeddings, probes, k, block_rows)


def top_k_search(index: np.ndarray, probes, k: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> Tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """(indices [M, k'], scores [M, k']) of the k largest index @ probe per probe, best first (k' = min(k, N)).

    index: [N, D] float32 or float16 (a memory map is read block by block); probes: [M, D] float32. The first
    (small) block's top k comes from np.argpartition; in each later block only the scores above a probe's current k-th best
    are gathered (one comparison and np.nonzero over the block's [M, rows] scores, much cheaper than a partition)
    and merged with the current best."""
    probes = np.ascontiguousarray(probes, np.float32)
    if probes.ndim != 2 or probes.shape[1] != index.shape[1]:
        raise ValueError(f"probes must be [M, {index.shape[1]}], got {list(probes.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    count, k = index.shape[0], min(k, index.shape[0])
    best_scores = best_indices = None
    start = 0
    while start < count:
        # a small first block (its top k by a partition), at least k rows; then blocks of block_rows
        rows = max(min(block_rows, FIRST_BLOCK_ROWS), k) if best_scores is None else block_rows
        block = np.asarray(index[start:start + rows], dtype=np.float32)
        scores = probes @ block.T  # [M, rows]
        if best_scores is None:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            best_scores, best_indices = np.take_along_axis(scores, keep, axis=1), keep.astype(np.int64) + start
        else:
            best_scores, best_indices = _merge_above(best_scores, best_indices, scores, start)
        start += len(block)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_indices, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


def _merge_above(best_scores: np.ndarray, best_indices: np.ndarray, scores: np.ndarray, offset: int):
    """The new top k [M, k] of each probe from its current top k and the block's `scores` [M, rows] above its
    k-th best (row j of the block is entry offset + j)."""
    probes, k = best_scores.shape
    rows, columns = np.nonzero(scores > best_scores.min(axis=1, keepdims=True))
    if len(rows) == 0:
        return best_scores, best_indices
    owner = np.concatenate([np.repeat(np.arange(probes), k), rows])
    merged_scores = np.concatenate([best_scores.ravel(), scores[rows, columns]])
    merged_indices = np.concatenate([best_indices.ravel(), columns.astype(np.int64) + offset])
    order = np.lexsort((-merged_scores, owner))  # by probe, then best first
    owner, merged_scores, merged_indices = owner[order], merged_scores[order], merged_indices[order]
    first_of_owner = np.searchsorted(owner, np.arange(probes))
    taken = (first_of_owner[:, None] + np.arange(k)).ravel()  # every probe has >= k entries
    return merged_scores[taken].reshape(probes, k), merged_indices[taken].reshape(probes, k)


def write_gallery(folder, embeddings, names: Sequence[str], photos: Sequence[str], model: Dict) -> Gallery:
    """Writes a gallery of float [N, D] unit `embeddings` with their names and photos (replacing one there)."""
    folder = Path(folder)
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or not (len(embeddings) == len(names) == len(photos)):
        raise ValueError(f"embeddings [N, D], names [N] and photos [N] must agree, got {list(embeddings.shape)}, "
                         f"{len(names)} and {len(photos)}")
    for text in (*names, *photos):
        if "\n" in text or "\r" in text:
            raise ValueError(f"a name or photo path holds a line break: {text!r}")
    data = {"embeddings": _npy_bytes(embeddings.astype(DTYPE)), "entries": _entries_bytes(names, photos)}
    files = {}
    for key, content in data.items():
        suffix = ".npy" if key == "embeddings" else ".csv"
        files[key] = f"{key}-{hashlib.sha256(content).hexdigest()[:16]}{suffix}"
        if not (folder / files[key]).is_file():
            atomic.write_bytes(folder / files[key], content)
    manifest = {"format": FORMAT, "dtype": np.dtype(DTYPE).name, "embedding_size": int(embeddings.shape[1]),
                "count": len(names), "identities": len(set(names)), "model": model, **files}
    atomic.write_json(folder / MANIFEST, manifest)
    for stale in [*folder.glob("embeddings-*.npy"), *folder.glob("entries-*.csv")]:
        if stale.name not in files.values():
            stale.unlink()
    return Gallery.open(folder)


def append_gallery(folder, embeddings, names: Sequence[str], photos: Sequence[str], model: Dict) -> Gallery:
    """Adds entries to the gallery at `folder` (written anew, atomically as `write_gallery`; nothing is written
    when there are none); the model's embedding size must match."""
    current = Gallery.open(folder)
    if not len(names):
        return current
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != current.embeddings.shape[1]:
        raise ConfigError(f"gallery {folder} holds {current.embeddings.shape[1]}-d embeddings; the model gives "
                          f"{embeddings.shape[1]}-d")
    combined = np.concatenate([np.asarray(current.embeddings, np.float32), embeddings])
    return write_gallery(folder, combined, [*current.names, *names], [*current.photos, *photos], model)
