"""Rank-k identification with distractors: a constructed gallery by hand, and chunked == brute force."""
import numpy as np
import pytest

from tfface.evaluation import count_distractors_above_mate, identification_rates, probe_mate_pairs


def unit_at_degrees(angles):
    radians = np.deg2rad(angles)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_ranks_on_a_constructed_gallery():
    # Probes at 0 and 90 degrees; mates at 10 and 100; distractors at 5, 20, 30, 95, 92, 150 degrees.
    # Probe 0: only 5 is closer than 10 -> 1 above (rank 2). Probe 90: 95 and 92 closer than 100 -> 2 (rank 3).
    probes, mates = unit_at_degrees([0, 90]), 2.0 * unit_at_degrees([10, 100])
    distractors = unit_at_degrees([5, 20, 30, 95, 92, 150])
    np.testing.assert_array_equal(count_distractors_above_mate(probes, mates, distractors), [1, 2])
    rates = identification_rates(probes, mates, distractors, ranks=(1, 2, 3))
    assert rates == {1: 0.0, 2: 0.5, 3: 1.0}


def test_chunked_counts_equal_brute_force():
    rng = np.random.default_rng(0)
    probes, mates, distractors = rng.normal(size=(11, 8)), rng.normal(size=(11, 8)), rng.normal(size=(53, 8))
    mates[:6] = probes[:6] + 0.5 * rng.normal(size=(6, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    brute = [
        sum(float(unit(distractors)[j] @ unit(probes)[i]) > float(unit(mates)[i] @ unit(probes)[i]) for j in range(53))
        for i in range(11)
    ]
    counts = count_distractors_above_mate(probes, mates, distractors, distractor_chunk=7, probe_chunk=3)
    np.testing.assert_array_equal(counts, brute)
    rates = identification_rates(probes, mates, distractors, ranks=(1, 5), distractor_chunk=10)
    assert rates == {1: pytest.approx(np.mean(np.array(brute) < 1)), 5: pytest.approx(np.mean(np.array(brute) < 5))}


def test_distractors_can_stream_from_a_memmap(tmp_path):
    rng = np.random.default_rng(1)
    distractors = rng.normal(size=(40, 4)).astype(np.float32)
    stored = np.lib.format.open_memmap(tmp_path / "distractors.npy", mode="w+", dtype=np.float32, shape=(40, 4))
    stored[:] = distractors
    stored.flush()
    probes, mates = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    from_disk = count_distractors_above_mate(probes, mates, np.load(tmp_path / "distractors.npy", mmap_mode="r"),
                                             distractor_chunk=16)
    np.testing.assert_array_equal(from_disk, count_distractors_above_mate(probes, mates, distractors))


def test_probe_mate_pairs_lists_every_ordered_same_identity_pair():
    probes, mates = probe_mate_pairs(["a", "b", "a", "c", "a", "b"])
    assert list(zip(probes, mates)) == [(0, 2), (0, 4), (1, 5), (2, 0), (2, 4), (4, 0), (4, 2), (5, 1)]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="distractors"):
        count_distractors_above_mate(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="mates"):
        count_distractors_above_mate(np.ones((2, 3)), np.ones((3, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="ranks"):
        identification_rates(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 3)), ranks=(0,))
