"""Benchmark the evaluation maths: 10-fold verification of embedding pairs, and a TAR@FAR table over many scores.

    python -m benchmarks.bench_evaluation [--pairs 6000] [--dim 512] [--scores 10000000] [--repeats 5] [--seed 0]

Times `tfface.evaluation.evaluate_pairs` on --pairs given embedding pairs (everything `tools.evaluate` reports for a
benchmark: 10-fold accuracy, VAL@FAR, AUC, EER, TAR@FAR; embeddings [P, dim], half the pairs genuine) and
`tfface.evaluation.tar_at_far` on --scores similarity scores (1% genuine, as in IJB-C's 1:1 protocol) at the six
FARs 1e-6 .. 1e-1. Prints the median wall time over --repeats runs after one warm-up run, and the CPU time.
Targets (issue 9, 2 CPU cores): 6,000 pairs in under 1 s; 10^7 scores in under 30 s.
"""
import argparse
import statistics
import sys
import time
from typing import Callable, Dict

import numpy as np

from tfface.evaluation.verification import evaluate_pairs, tar_at_far

GENUINE_SCORE_FRACTION = 0.01
GENUINE_NOISE = 6.0  # genuine pairs: cosine about 1 / sqrt(1 + 6^2) = 0.16 against 0 +- 0.04 for impostors


def embedding_pairs(pairs: int, dim: int, rng: np.random.Generator):
    """(first [P, dim], second [P, dim], issame [P]): genuine pairs share a direction plus GENUINE_NOISE noise."""
    first = rng.normal(size=(pairs, dim)).astype("float32")
    issame = np.arange(pairs) % 2 == 0
    second = rng.normal(size=(pairs, dim)).astype("float32")
    second[issame] = first[issame] + rng.normal(scale=GENUINE_NOISE, size=(int(issame.sum()), dim)).astype("float32")
    return first, second, issame


def similarity_scores(count: int, rng: np.random.Generator):
    """(scores [count] float32, labels [count] bool): impostors ~ N(0, 0.1), genuine ~ N(0.5, 0.15)."""
    labels = rng.random(count) < GENUINE_SCORE_FRACTION
    scores = rng.normal(0.0, 0.1, size=count).astype("float32")
    scores[labels] = rng.normal(0.5, 0.15, size=int(labels.sum())).astype("float32")
    return scores, labels


def time_call(function: Callable[[], object], repeats: int) -> Dict[str, float]:
    """{"seconds": median wall time, "cpu_seconds": median process CPU time} over `repeats` after one warm-up."""
    function()
    walls, cpus = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - started_cpu)
    return {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_evaluation", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=6000, help="verification pairs (default 6000, LFW's)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    parser.add_argument("--scores", type=int, default=10_000_000, help="scores for the TAR@FAR table")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("pairs", "dim", "scores", "repeats"):
        if getattr(args, name) < (20 if name in ("pairs", "scores") else 1):
            print(f"error: --{name} is too small: {getattr(args, name)}", file=sys.stderr)
            return 2
    rng = np.random.default_rng(args.seed)

    first, second, issame = embedding_pairs(args.pairs, args.dim, rng)
    result = evaluate_pairs(first, second, issame)
    timing = time_call(lambda: evaluate_pairs(first, second, issame), args.repeats)
    print(f"verification, {args.pairs} pairs of {args.dim}-d embeddings (10 folds, VAL, AUC, EER, TAR@FAR): "
          f"{timing['seconds']:.3f} s (CPU {timing['cpu_seconds']:.3f} s); accuracy {result['accuracy_mean']:.4f}")

    scores, labels = similarity_scores(args.scores, rng)
    table = tar_at_far(scores, labels)
    timing = time_call(lambda: tar_at_far(scores, labels), args.repeats)
    print(f"TAR@FAR, {args.scores} scores ({int(labels.sum())} genuine), FARs 1e-6 .. 1e-1: "
          f"{timing['seconds']:.2f} s (CPU {timing['cpu_seconds']:.2f} s); "
          + ", ".join(f"{far:g}: {tar:.4f}" for far, tar in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
