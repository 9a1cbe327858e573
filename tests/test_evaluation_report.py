"""tfface.evaluation.report: TAR@FAR cells of FARs the negative pairs cannot measure read n/a."""
from tfface.evaluation.report import far_is_measured, markdown_report, tar_cell


def test_a_far_below_one_over_the_negatives_is_not_measured():
    # 350 negatives: the smallest FAR they show is 1/350 = 2.9e-3
    assert not far_is_measured(1e-4, 350) and not far_is_measured(1e-3, 350) and far_is_measured(1e-2, 350)
    assert far_is_measured(1e-3, 1000) and not far_is_measured(1e-3, 999)
    assert tar_cell(1e-3, 0.5, 350) == "n/a (needs >= 1000 negatives)"
    assert tar_cell(1e-4, 0.5, 350) == "n/a (needs >= 10000 negatives)"
    assert tar_cell(1e-2, 0.8125, 350) == "81.25"


def test_the_markdown_table_marks_unmeasured_tar_at_far():
    entry = {"kind": "pairs_csv", "pairs": 700, "negative_pairs": 350, "images": 140, "accuracy_mean": 0.9,
             "accuracy_std": 0.01, "auc": 0.95, "eer": 0.1, "val": 0.5, "far": 0.001, "seconds": 1.0,
             "tar_at_far": {"1e-04": 0.3, "1e-03": 0.3, "1e-02": 0.6}, "roc_plot": "roc_mine.png"}
    report = {"command": "python -m tools.evaluate ...", "benchmarks": {"mine": entry},
              "model": {"source": "models/m/1", "input_size": [112, 112], "embedding_size": 128},
              "settings": {"flip": "sum", "pca": 0, "val_far_target": 1e-3}}
    row = next(line for line in markdown_report(report).splitlines() if line.startswith("| mine |"))
    assert "| n/a (needs >= 10000 negatives) | n/a (needs >= 1000 negatives) | 60.00 |" in row
