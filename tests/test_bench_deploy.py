"""benchmarks.bench_evaluate and benchmarks.bench_deploy run on a tiny model and print their Markdown rows (their
numbers are measurements, not checked here)."""
import re

import pytest

from benchmarks.bench_deploy import main as bench_deploy
from benchmarks.bench_evaluate import main as bench_evaluate
from tfface.export import export_run

from test_export import write_tiny_run


def table_rows(text: str):
    return [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("|") and "---" not in line]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run dir, its SavedModel): one tiny run, exported once, that both benchmarks only read."""
    folder = tmp_path_factory.mktemp("bench_deploy")
    run = write_tiny_run(folder / "run")
    return run, export_run(run, folder / "models" / "tiny" / "1")


def test_bench_evaluate_prints_both_rates(tiny_run, capsys):
    model = tiny_run[1]
    assert bench_evaluate(["--model", str(model), "--images", "10", "--batch", "4", "--repeats", "1"]) == 0
    header, row = table_rows(capsys.readouterr().out)
    assert header[2].strip() == "bare forward" and header[3].strip() == "end to end"
    assert row[0].strip() == str(model) and row[1].strip() == "4"
    for cell in (row[2], row[3], row[5]):
        rate, per_cpu = re.fullmatch(r" ([0-9.]+) images/s \(([0-9.]+) per CPU-s\) ", cell).groups()
        assert float(rate) > 0 and float(per_cpu) > 0
    assert float(row[4]) > 0


def test_bench_deploy_prints_a_row_per_model(tiny_run, tmp_path, capsys):
    from tfface.deploy import export_file

    run, saved_model = tiny_run
    export_file(run, tmp_path / "tiny.onnx", "onnx")
    assert bench_deploy([str(saved_model), str(tmp_path / "tiny.onnx"), "--runs", "3"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert [row[1].strip() for row in rows] == ["savedmodel", "onnx"]
    assert float(rows[1][2]) == round((tmp_path / "tiny.onnx").stat().st_size / 1e6, 2)
    assert all(float(row[3]) > 0 for row in rows)
