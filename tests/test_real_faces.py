"""experiments/real_faces: the CFP preparation (fiducial fallback, fold-7 pairs) and the table's arithmetic."""
import csv
from pathlib import Path

import numpy as np
import pytest

from experiments.real_faces import prepare_cfp
from experiments.real_faces import run_table
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


def result(seed, **accuracies):
    """A result.json of experiments.ablation.ablate with the given accuracies (fractions)."""
    return {"seed": seed, "finite": True, "train_seconds": 120.0, "steps_per_second": 1.0,
            "benchmarks": {name: {"accuracy_mean": value, "auc": 0.9} for name, value in accuracies.items()}}


def test_paired_difference_mean_and_standard_error_by_hand():
    """Baseline FP 80, 82, 84, 86 and method 81, 85, 85, 89 (seeds 1-4): differences 1, 3, 1, 3, mean 2, sample std
    sqrt(4/3), SE sqrt(4/3)/2 = 0.5774; 2 SE = 1.155 < 2: holds. The method's own mean 85, SE std(81,85,85,89)/2 =
    sqrt(32/3)/2 = 1.633."""
    baseline = {seed: result(seed, fp=value / 100) for seed, value in zip(range(1, 5), (80, 82, 84, 86))}
    method = {seed: result(seed, fp=value / 100) for seed, value in zip(range(1, 5), (81, 85, 85, 89))}
    row = run_table.row_summary(method, ["fp"], baseline)
    entry = row["benchmarks"]["fp"]
    assert entry["per_seed"] == {1: pytest.approx(81), 2: pytest.approx(85), 3: pytest.approx(85), 4: pytest.approx(89)}
    assert entry["mean"] == pytest.approx(85) and entry["se"] == pytest.approx(np.sqrt(32 / 3) / 2)
    assert entry["vs_baseline"]["mean"] == pytest.approx(2) and entry["vs_baseline"]["n"] == 4
    assert entry["vs_baseline"]["se"] == pytest.approx(np.sqrt(4 / 3) / 2)
    assert entry["vs_baseline"]["verdict"] == "holds"
    assert row["train_seconds"] == pytest.approx(120.0)


def test_paired_difference_uses_only_the_common_seeds():
    """The method has seeds 1-3, the baseline 1-2: differences over seeds 1, 2 only (+2 and -2: mean 0)."""
    baseline = {1: result(1, fp=0.80), 2: result(2, fp=0.90)}
    method = {1: result(1, fp=0.82), 2: result(2, fp=0.88), 3: result(3, fp=0.99)}
    difference = run_table.row_summary(method, ["fp"], baseline)["benchmarks"]["fp"]["vs_baseline"]
    assert difference["n"] == 2 and difference["mean"] == pytest.approx(0.0)
    assert difference["verdict"] == "not shown at this scale"


def test_verdicts():
    assert run_table.verdict({"mean": 1.0, "se": 0.49, "n": 4}) == "holds"
    assert run_table.verdict({"mean": 1.0, "se": 0.5, "n": 4}) == "not shown at this scale"
    assert run_table.verdict({"mean": -1.2, "se": 0.5, "n": 4}) == "worse beyond 2 SE"
    assert run_table.verdict({"mean": 5.0, "se": None, "n": 1}) == "not shown at this scale (1 seed)"


def test_cells_pair_with_the_baseline_of_their_split():
    assert run_table.paired_baseline("latse@noisy20") == "baseline@noisy20"
    assert run_table.paired_baseline("center_invariant@longtail") == "baseline@longtail"
    assert run_table.paired_baseline("aprn") == "baseline"


def test_gate_precision_and_recall_from_its_statistics():
    """100 clean and 25 noisy examples; the gate keeps 90 clean (drops 10) and drops 20 noisy: precision 20/30,
    recall 20/25."""
    entry = {"kept": 95 / 125, "clean_kept": 0.9, "noisy_dropped": 0.8, "clean": 100, "noisy": 25}
    gate = run_table.gate_precision_recall(entry)
    assert gate["precision"] == pytest.approx(20 / 30) and gate["recall"] == pytest.approx(0.8)


def test_finished_runs_and_the_study_table(tmp_path, monkeypatch):
    """A stopped study: finished runs are read back per cell and seed (cells without one left out), the recipe is
    compared with the imported network and each method with its split's baseline (aprn: +1 and +2 points, mean
    1.5, SE std(1, 2)/sqrt(2) = 0.5, beyond 2 SE: holds); latse@noisy20 has no finished baseline; nothing trains."""
    import json

    def grid(name, cells, seeds, benchmarks):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"base: trainers/configs/finetune.yaml\nout: {tmp_path / name}\nseeds: {seeds}\n"
                        f"benchmarks: {{{', '.join(f'{b}: x.csv' for b in benchmarks)}}}\n"
                        f"cells: [{', '.join(f'{{name: {cell}, set: []}}' for cell in cells)}]\n")
        return path

    def finish(name, cell, seed, **accuracies):
        folder = tmp_path / name / cell / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(result(seed, **accuracies)))

    names = [*run_table.VALIDATION, *run_table.TEST]
    grids = {"validation": grid("validation", ["a", "b", "finetune_2ep", "c"], [0, 1], run_table.VALIDATION),
             "recipe": grid("recipe", ["finetune"], [1, 2], names),
             "methods": grid("methods", ["baseline", "aprn", "'baseline@noisy20'", "'latse@noisy20'"], [1, 2], names)}
    finish("validation", "a", 0, cfp_fp_fold6=0.9, cfp_ff_fold6=0.99)
    for seed, fp in ((0, 0.91), (1, 0.90)):  # c against the reference finetune_2ep: +2 and +3 points (paired SE 0.5)
        finish("validation", "finetune_2ep", seed, cfp_fp_fold6=fp, cfp_ff_fold6=0.99)
        finish("validation", "c", seed, cfp_fp_fold6=fp + 0.02 + 0.01 * seed, cfp_ff_fold6=0.99)
    for seed, fp in ((1, 0.90), (2, 0.92)):
        finish("recipe", "finetune", seed, **dict.fromkeys(names, fp))
        finish("methods", "baseline", seed, **dict.fromkeys(names, fp))
        finish("methods", "aprn", seed, **dict.fromkeys(names, fp + 0.01 * seed))
        finish("methods", "latse@noisy20", seed, **dict.fromkeys(names, fp))
    as_is = {"imported": dict.fromkeys(names, {"accuracy_mean": 0.88})}
    study = run_table.study(as_is, grids, {})
    assert list(study["validation"]) == ["a", "finetune_2ep", "c"]
    recipe = study["recipe"]["finetune"]["benchmarks"]["cfp_fp_fold7"]
    assert recipe["mean"] == pytest.approx(91) and recipe["vs_imported"]["mean"] == pytest.approx(3)
    assert recipe["se"] == pytest.approx(1.0)
    assert study["methods"]["aprn"]["paired_with"] == "baseline"
    assert study["methods"]["aprn"]["benchmarks"]["cfp_fp_fold7"]["vs_baseline"]["mean"] == pytest.approx(1.5)
    assert study["methods"]["baseline"]["paired_with"] is None
    latse = study["methods"]["latse@noisy20"]
    assert latse["paired_with"] == "baseline@noisy20" and "vs_baseline" not in latse["benchmarks"]["cfp_fp_fold7"]
    text = run_table.markdown(study)
    assert "| candidate `a` | 0 | 90.00 | 99.00 | - | - | 2.0 min |" in text
    assert ("| candidate `c` | 0, 1 | 93.00 +- 0.00 (93.00, 93.00); +2.50 +- 0.50 vs `finetune_2ep` | "
            "99.00 +- 0.00 (99.00, 99.00); +0.00 +- 0.00 vs `finetune_2ep` | - | - |") in text
    assert "| candidate `finetune_2ep` | 0, 1 | 90.50 +- 0.50 (91.00, 90.00) | " in text
    assert "| `finetune` vs imported | | +3.00 +- 1.00 |" in text
    assert "| aprn | baseline | 1, 2 | 91.00, 94.00 | 92.50 +- 1.50 | +1.50 +- 0.50 | holds |" in text


def test_complete_results_reads_only_the_missing_benchmarks(tmp_path, monkeypatch):
    """The chosen candidate's seed-0 run was read on fold 6 only: the recipe grid's fold-7 entry is added from its
    export, the fold-6 entry kept; a complete run is not evaluated again."""
    import json

    from experiments.ablation import ablate

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base: trainers/configs/finetune.yaml\nout: {tmp_path}\nseeds: [0, 1]\n"
                    "benchmarks: {fold6: a.csv, fold7: b.csv}\ncells: [{name: finetune, set: []}]\n")
    for seed, benchmarks in ((0, {"fold6": 0.9}), (1, {"fold6": 0.9, "fold7": 0.8})):
        folder = tmp_path / "finetune" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(result(seed, **benchmarks)))
    calls = []

    def evaluate(export_dir, benchmarks):
        calls.append((Path(export_dir), benchmarks))
        return {name: {"accuracy_mean": 0.7, "auc": 0.8} for name in benchmarks}

    monkeypatch.setattr(ablate, "evaluate_export", evaluate)
    run_table.complete_results(grid)
    assert calls == [(tmp_path / "finetune" / "seed0" / "export" / "1", {"fold7": "b.csv"})]
    updated = json.loads((tmp_path / "finetune" / "seed0" / "result.json").read_text())
    assert updated["benchmarks"]["fold6"]["accuracy_mean"] == 0.9
    assert updated["benchmarks"]["fold7"]["accuracy_mean"] == 0.7
