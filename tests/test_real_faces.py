"""experiments/real_faces: the CFP preparation (fiducial fallback, fold-7 pairs) and the table's arithmetic."""
import csv

import numpy as np
import pytest

from experiments.real_faces import prepare_cfp
from experiments.real_faces.run_table import markdown, table
from tfface.data.alignment import arcface_template, transform_points


def fiducials_with(eye, nose, mouth) -> np.ndarray:
    """30 CFP fiducials whose eye contour (points 13-18) is centred on `eye`, nose tip (22) and mouth corner (26)."""
    points = np.zeros((30, 2))
    ring = np.array([[-4, 0], [-2, -2], [2, -2], [4, 0], [2, 2], [-2, 2]], np.float64)
    points[12:18] = np.asarray(eye) + ring  # the ring's mean is 0
    points[21] = nose
    points[25] = mouth
    return points


def test_fiducial_fallback_puts_the_annotated_half_on_the_template():
    """A face annotated on its image-left half: 2 x the template's left eye, nose and left mouth corner, shifted by
    (10, 20); the similarity must undo exactly that (scale 1/2, no rotation)."""
    template = arcface_template((112, 112))
    source = 2 * template + np.array([10.0, 20.0])
    fiducials = fiducials_with(source[0], source[2], source[3])
    matrix = prepare_cfp.fiducial_matrix(fiducials)
    np.testing.assert_allclose(matrix[:2, :2], np.eye(2) / 2, atol=1e-9)
    np.testing.assert_allclose(transform_points(matrix, source[[0, 2, 3]]), template[[0, 2, 3]], atol=1e-9)


def test_fiducial_fallback_uses_the_right_half_when_the_eye_is_right_of_the_nose():
    template = arcface_template((112, 112))
    fiducials = fiducials_with(template[1], template[2], template[4])
    points, rows = prepare_cfp.fiducial_points(fiducials)
    assert rows == prepare_cfp.TEMPLATE_RIGHT
    np.testing.assert_allclose(transform_points(prepare_cfp.fiducial_matrix(fiducials), points), template[list(rows)],
                               atol=1e-9)


def test_fold_pairs_use_aligned_crops_and_identity_disjoint_sub_folds(tmp_path):
    cfp, out = tmp_path / "cfp", tmp_path / "data"
    cfp.mkdir()
    rows = [("images/001/frontal/01.jpg", "images/001/profile/01.jpg", 1, 0)]  # another fold: left out
    for identity in range(351, 401):
        for index in range(1, 8):
            rows.append((f"images/{identity:03d}/frontal/{index:02d}.jpg", f"images/{identity:03d}/profile/01.jpg",
                         1, 7))
            rows.append((f"images/{identity:03d}/frontal/{index:02d}.jpg", "images/351/profile/02.jpg", 0, 7))
    for protocol in ("FP", "FF"):
        with open(cfp / f"pairs_{protocol}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("path1", "path2", "issame", "fold"), *rows])
    prepare_cfp.fold_pairs(cfp, out / "aligned", out, 7)
    with open(out / "fold7_FP.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 700
    assert written[0]["path1"] == "aligned/112x112/351/frontal/01.png"
    by_fold = {}
    for row in written:
        by_fold.setdefault(int(row["fold"]), set()).add(row["path1"].split("/")[2])
    assert sorted(by_fold) == list(range(10))
    assert all(len(identities) == 5 for identities in by_fold.values())
    assert set.intersection(*by_fold.values()) == set()


def test_fold_pairs_refuse_a_fold_of_the_wrong_size(tmp_path):
    cfp = tmp_path / "cfp"
    cfp.mkdir()
    (cfp / "pairs_FP.csv").write_text(
        "path1,path2,issame,fold\nimages/351/frontal/01.jpg,images/351/profile/01.jpg,1,7\n")
    with pytest.raises(prepare_cfp.ConfigError, match="fold 7 has 1 pairs, expected 700"):
        prepare_cfp.fold_pairs(cfp, tmp_path / "aligned", tmp_path / "data", 7)


def test_table_rows_against_the_baseline():
    benchmarks = {"fp": "fp.csv"}
    as_is = {"imported": {"fp": {"accuracy_mean": 0.80}}, "onnxruntime": {"fp": {"accuracy_mean": 0.80}}}
    grid = {
        "baseline": {"benchmarks": {"fp": {"accuracy": {"mean": 0.85, "std": 0.01, "n": 2}}}, "steps_per_second": 2.0},
        "aprn": {"benchmarks": {"fp": {"accuracy": {"mean": 0.84, "std": 0.02, "n": 2}}}, "steps_per_second": 1.0},
    }
    rows = table(as_is, grid, benchmarks)
    assert rows["aprn"]["fp"] == {"mean": pytest.approx(84.0), "std": pytest.approx(2.0), "n": 2}
    assert rows["aprn"]["delta"]["fp"] == pytest.approx(-1.0)
    assert rows["imported, as is"]["delta"]["fp"] == pytest.approx(-5.0)
    assert rows["aprn"]["time_vs_baseline"] == pytest.approx(2.0)
    text = markdown(rows, benchmarks)
    assert "| aprn | 84.00 +- 2.00 | -1.00 | 2 | 2.00x |" in text


def test_table_only_reads_the_finished_runs(tmp_path):
    """A stopped grid: baseline has both seeds, aprn one, exclusive none (left out); nothing is trained."""
    import json

    from experiments.real_faces.run_table import finished_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base: experiments/real_faces/configs/cfp_finetune.yaml\nout: {tmp_path / 'runs'}\n"
                    "seeds: [0, 1]\nbenchmarks: {fp: fp.csv}\n"
                    "cells: [{name: baseline, set: []}, {name: aprn, set: []}, {name: exclusive, set: []}]\n")
    for cell, seed, accuracy in (("baseline", 0, 0.86), ("baseline", 1, 0.88), ("aprn", 0, 0.85)):
        folder = tmp_path / "runs" / cell / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "seed": seed, "finite": True, "steps_per_second": 1.0,
            "benchmarks": {"fp": {"accuracy_mean": accuracy, "auc": 0.9}}}))
    summary = finished_grid(grid)
    assert list(summary) == ["baseline", "aprn"]
    assert summary["baseline"]["benchmarks"]["fp"]["accuracy"] == {"mean": pytest.approx(0.87),
                                                                   "std": pytest.approx(0.01), "n": 2}
    assert summary["aprn"]["benchmarks"]["fp"]["accuracy"]["n"] == 1
