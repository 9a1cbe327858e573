"""experiments.aprn.summary: mean and spread over aprn_compare reports, and the per-report agreement with APRN's claims."""
import json

import pytest

from experiments.aprn import summary as aprn_summary


def _result(pose, l1, relative, verification, verification_std=0.01):
    return {
        "pose_probe": {"val_accuracy": pose},
        "landmark_probe": {"stage4": {"l1": l1, "relative_l1": relative}},
        "cross_pose": {"accuracy_mean": verification, "accuracy_std": verification_std},
    }


@pytest.fixture
def reports(tmp_path):
    contents = [
        {"baseline": _result(0.80, 7.0, 0.50, 0.950), "aprn": _result(0.70, 8.0, 0.60, 0.946)},
        {"baseline": _result(0.90, 7.5, 0.55, 0.940), "aprn": _result(0.92, 7.9, 0.58, 0.920)},
    ]
    paths = []
    for index, results in enumerate(contents):
        path = tmp_path / f"report{index}.json"
        path.write_text(json.dumps({"settings": {}, "results": results}))
        paths.append(str(path))
    return paths


def test_mean_std_and_agreement_by_hand(reports, tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert aprn_summary.main([*reports, "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    pose = summary["runs"]["aprn"]["pose-probe SVM accuracy"]
    assert pose["mean"] == pytest.approx(0.81) and pose["std"] == pytest.approx(0.11)  # (0.70, 0.92)
    l1 = summary["runs"]["baseline"]["landmark-probe L1"]
    assert l1["mean"] == pytest.approx(7.25) and l1["std"] == pytest.approx(0.25)
    # report 1: pose 0.70 < 0.80, 8.0 > 7.0, 0.946 >= 0.950 - 0.01; report 2: 0.92 > 0.90, 7.9 > 7.5, 0.920 < 0.930
    assert summary["agreement"] == {
        "aprn": {"pose probe lower": 1, "landmark error higher": 2, "verification kept": 1}
    }
    printed = capsys.readouterr().out
    assert "| aprn | 0.810 +- 0.110 | 7.950 +- 0.050 | 0.590 +- 0.010 | 0.933 +- 0.013 |" in printed
    assert "aprn against baseline, report by report: pose probe lower 1/2" in printed


def test_reports_with_other_runs_or_stages_are_named(reports, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"results": {"baseline": _result(0.8, 7, 0.5, 0.9)}}))
    assert aprn_summary.main([reports[0], str(other)]) == 2
    assert f"{other}: runs ['baseline'] differ" in capsys.readouterr().err
    assert aprn_summary.main([*reports, "--stage", "stage3"]) == 2
    assert "run baseline: no landmark probe of --stage stage3" in capsys.readouterr().err
    assert aprn_summary.main([*reports, "--reference", "control"]) == 2
    assert "--reference 'control' is not one of the runs" in capsys.readouterr().err
