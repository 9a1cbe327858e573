"""The benchmark tools on tiny settings: the training comparison table, the input-pipeline table and Partial FC's
byte counts and live steps."""
import math

import numpy as np
import pytest

from benchmarks import bench_evaluation, bench_partial_fc, bench_pipeline, bench_train


def test_train_comparison_runs_every_combination_and_writes_a_markdown_table(tmp_path, capsys):
    out = tmp_path / "tables" / "train.md"  # its folder is created; written to a temporary file and renamed
    argv = [
        "--compare", "--backbones", "tiny", "--heads", "softmax", "partial_fc", "--precisions", "float32",
        "mixed_bfloat16", "--batches", "4", "--size", "16", "16", "--classes", "10", "--warmup", "1", "--steps", "1",
        "--sample-rate", "0.5", "--strategy", "default", "--markdown", str(out),
    ]
    assert bench_train.main(argv) == 0
    lines = out.read_text().strip().splitlines()
    assert lines[0] == "| backbone | head | precision | batch | device | images/s | step ms | images per CPU-s |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [(row[1], row[2]) for row in rows] == [
        ("softmax", "float32"), ("softmax", "mixed_bfloat16"), ("partial_fc", "float32"),
        ("partial_fc", "mixed_bfloat16"),
    ]
    for row in rows:
        assert row[0] == "tiny" and row[3] == "4" and "1 replica(s)" in row[4]
        assert float(row[5]) > 0 and float(row[6]) > 0 and float(row[7]) > 0
        assert math.isclose(float(row[5]), 4 / (float(row[6]) / 1000), rel_tol=0.1)
    assert capsys.readouterr().out.strip().splitlines() == lines
    assert [path.name for path in out.parent.iterdir()] == ["train.md"]


def test_train_bench_rejects_unknown_names(capsys):
    assert bench_train.main(["--compare", "--backbones", "resnet9000", "--heads", "arcface"]) == 2
    assert "unknown backbone(s) resnet9000; available:" in capsys.readouterr().err
    assert bench_train.main(["--compare", "--backbones", "tiny", "--precisions", "float8"]) == 2
    assert "unknown precision(s) float8" in capsys.readouterr().err


def test_pipeline_bench_measures_each_variant(tmp_path):
    one = bench_pipeline.write_synthetic(tmp_path / "one", 24, (20, 20), "jpeg", shards=1)
    many = bench_pipeline.write_synthetic(tmp_path / "many", 24, (20, 20), "png", shards=3)
    assert len(list(many.glob("*.tfrecord"))) == 3
    rows = bench_pipeline.run_variants([("one", one), ("many", many)], "train", batch=8, batches=2, train_rate=10.0)
    assert [(row["data"], row["shards"], row["cache"]) for row in rows] == [
        ("one", 1, False), ("one", 1, True), ("many", 3, False), ("many", 3, True)
    ]
    for row in rows:
        assert row["images_per_second"] > 0 and row["ratio"] == pytest.approx(row["images_per_second"] / 10.0)
    table = bench_pipeline.markdown_table(rows).splitlines()
    assert table[0] == "| data | shards | cache | images/s | x training need |" and len(table) == 6
    assert table[4].startswith("| many | 3 | no | ")


def test_pipeline_bench_cli_writes_its_table(tmp_path, capsys):
    out = tmp_path / "pipeline.md"
    argv = ["--synthetic", "16", "--size", "20", "20", "--shards", "2", "--batch", "8", "--batches", "1",
            "--markdown", str(out)]
    assert bench_pipeline.main(argv) == 0
    assert len(out.read_text().strip().splitlines()) == 6
    assert [path.name for path in tmp_path.iterdir()] == ["pipeline.md"]
    assert bench_pipeline.main(["--synthetic", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_partial_fc_bytes_follow_the_formulas():
    """C = 10 classes, D = 4, global batch N = 6 over R = 2 replicas, float32."""
    full = bench_partial_fc.memory_bytes(10, 4, 6, 2)
    assert full == {
        "parameters": 10 * 4 * 4, "optimizer_state": 10 * 4 * 4, "gradients": 10 * 4 * 4,
        "logits": 2 * 3 * 10 * 4, "total": 160 * 3 + 240,
    }
    # shard ceil(10 / 2) = 5 rows; k = min(5, max(ceil(0.2 * 5), 6)) = 5 sampled rows
    partial = bench_partial_fc.memory_bytes(10, 4, 6, 2, sample_rate=0.2)
    assert partial == {
        "parameters": 5 * 4 * 4, "optimizer_state": 5 * 4 * 4, "gradients": 2 * 5 * 4 * 4,
        "logits": 2 * 6 * 5 * 4, "total": 80 + 80 + 160 + 240,
    }
    # 1M classes, D 512, batch 128, 2 replicas, rate 0.1: shard 500000 rows, k = 50000
    big = bench_partial_fc.memory_bytes(1_000_000, 512, 128, 2, sample_rate=0.1)
    assert big["parameters"] == 500_000 * 512 * 4 and big["logits"] == 2 * 128 * 50_000 * 4
    assert bench_partial_fc.memory_bytes(1_000_000, 512, 128, 2)["total"] > 2.8 * big["total"]


@pytest.mark.parametrize("head, replicas", [("partial", 2), ("full", 1)])
def test_partial_fc_live_steps_train(head, replicas):
    result = bench_partial_fc.live_steps(head, 50, 8, 8, 0.2, replicas, steps=2)
    assert np.isfinite(result["loss"]) and result["step_seconds"] > 0
    assert result["end"]["VmHWM"] >= result["end"]["VmRSS"] > 0


def test_partial_fc_bench_table_and_errors(capsys):
    assert bench_partial_fc.main(["--classes", "1000", "--embedding-size", "8", "--batch", "16", "--no-live"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| head (1000 classes, D 8, batch 16, 2 replica(s)) | parameters GiB")
    assert table[2].startswith("| full FC |") and table[3].startswith("| Partial FC, rate 0.1 |")
    assert bench_partial_fc.main(["--sample-rate", "0", "--no-live"]) == 2
    assert "--sample-rate must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="divisible"):
        bench_partial_fc.live_steps("partial", 50, 8, 7, 0.2, 2)


def test_evaluation_bench_times_both_parts_on_data_with_the_stated_statistics(capsys):
    assert bench_evaluation.main(["--pairs", "200", "--dim", "16", "--scores", "20000", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("verification, 200 pairs of 16-d embeddings") and " s (CPU " in lines[0]
    assert lines[1].startswith("TAR@FAR, 20000 scores (") and "1e-06: " in lines[1] and "0.1: " in lines[1]
    rng = np.random.default_rng(0)
    first, second, issame = bench_evaluation.embedding_pairs(4000, 512, rng)
    cosines = np.sum(first * second, axis=1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)
    assert issame.mean() == 0.5
    assert np.mean(cosines[issame]) == pytest.approx(1 / math.sqrt(1 + bench_evaluation.GENUINE_NOISE ** 2), abs=0.02)
    assert np.mean(cosines[~issame]) == pytest.approx(0.0, abs=0.01)
    scores, labels = bench_evaluation.similarity_scores(100_000, rng)
    assert labels.mean() == pytest.approx(bench_evaluation.GENUINE_SCORE_FRACTION, abs=0.002)


def test_evaluation_bench_rejects_tiny_sizes(capsys):
    assert bench_evaluation.main(["--pairs", "5"]) == 2
    assert "--pairs is too small: 5" in capsys.readouterr().err
