"""Verification benchmarks named as `NAME=PATH` (tools.evaluate's --benchmark, training's evaluation.benchmarks):
the kind recognised from the path, and the pairs over distinct images.

A folder with pairs.txt is LFW (one folder per identity beside it), a .bin file an insightface verification set, a
folder with Protocol/ CFP (":FF" or ":FP" after it picks the protocol, FP by default), a .csv file a pairs CSV
(path1,path2,issame[,fold]).
"""
import hashlib
import re
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from tfface.errors import ConfigError
from tfface.evaluation.readers import PairList, load_bin, read_cfp_pairs, read_lfw_pairs, read_pairs_csv
from tfface.evaluation.readers.cfp import CFP_PROTOCOLS

BENCHMARK_NAME = re.compile(r"[A-Za-z0-9_.-]+")
KIND_HELP = (
    "a folder with pairs.txt (LFW), a .bin file (insightface), a folder with Protocol/ (CFP, optionally "
    "suffixed :FF or :FP) or a .csv file (pairs CSV)"
)


class Benchmark(NamedTuple):
    """One NAME=VALUE: kind is "lfw", "bin", "cfp:FF", "cfp:FP" or "csv"; path the file or folder."""

    name: str
    kind: str
    path: Path


class BenchmarkPairs(NamedTuple):
    """A benchmark's pairs over its distinct images.

    source: the distinct images, as N image file paths (read and resized to the model's input by the pipeline) or
    uint8 [N, H, W, 3] already at that size; first, second: int [P] indices of each pair's images; issame: bool [P];
    folds: int [P] or None.
    """

    source: Union[Sequence[str], np.ndarray]
    first: np.ndarray
    second: np.ndarray
    issame: np.ndarray
    folds: Optional[np.ndarray]

    @property
    def n_images(self) -> int:
        return len(self.source)


def parse_benchmark(spec: str, flag: str = "--benchmark") -> Benchmark:
    """NAME=VALUE -> Benchmark, its kind recognised from VALUE (see the module docstring); errors name `flag`."""
    name, separator, value = spec.partition("=") if isinstance(spec, str) else ("", "", "")
    if not separator or not value:
        raise ConfigError(f"{flag} must be NAME=PATH, got '{spec}'")
    if not BENCHMARK_NAME.fullmatch(name):
        raise ConfigError(f"{flag} name must be letters, digits, '_', '.' or '-', got '{name}'")
    protocol = None
    base, colon, suffix = value.rpartition(":")
    if colon and suffix.upper() in CFP_PROTOCOLS:
        value, protocol = base, suffix.upper()
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"benchmark {name}: not found: {value}")
    if path.is_dir() and (path / "Protocol").is_dir():
        return Benchmark(name, f"cfp:{protocol or 'FP'}", path)
    if protocol is not None:
        raise ConfigError(f"benchmark {name}: ':{protocol}' is for CFP folders, but {value} has no Protocol/ folder")
    if path.is_dir() and (path / "pairs.txt").is_file():
        return Benchmark(name, "lfw", path)
    if path.is_file() and path.suffix.lower() in (".bin", ".csv"):
        return Benchmark(name, path.suffix.lower()[1:], path)
    raise ConfigError(f"benchmark {name}: cannot tell the kind of {value}; expected {KIND_HELP}")


def pairs_of_files(pair_list: PairList) -> BenchmarkPairs:
    """BenchmarkPairs over a PairList's distinct image files."""
    paths, first, second = pair_list.image_index()
    return BenchmarkPairs(source=paths, first=first, second=second, issame=pair_list.issame, folds=pair_list.folds)


def pairs_of_bin(path: Path, image_size: Tuple[int, int]) -> BenchmarkPairs:
    """BenchmarkPairs of an insightface .bin (pair i = images 2i, 2i+1); identical decoded images count once."""
    images, issame = load_bin(path, image_size)
    position: Dict[bytes, int] = {}
    distinct = []
    index = np.empty(len(images), dtype=np.int64)
    for image_number, image in enumerate(images):
        digest = hashlib.sha1(image.tobytes()).digest()
        if digest not in position:
            position[digest] = len(distinct)
            distinct.append(image_number)
        index[image_number] = position[digest]
    return BenchmarkPairs(
        source=images[distinct],
        first=index[0::2],
        second=index[1::2],
        issame=issame,
        folds=None,
    )


def read_benchmark(benchmark: Benchmark, image_size: Tuple[int, int]) -> BenchmarkPairs:
    """Reads a benchmark's pair list (image files are read later, by the pipeline; a .bin's now, at image_size)."""
    if benchmark.kind == "lfw":
        return pairs_of_files(read_lfw_pairs(benchmark.path / "pairs.txt", benchmark.path))
    if benchmark.kind == "csv":
        return pairs_of_files(read_pairs_csv(benchmark.path))
    if benchmark.kind.startswith("cfp:"):
        return pairs_of_files(read_cfp_pairs(benchmark.path, benchmark.kind[len("cfp:"):]))
    return pairs_of_bin(benchmark.path, image_size)
