"""The main job end to end at toy size: data, training, export, 10-fold verification, gRPC serving."""
import json

from tools.demo import main


def test_demo_runs_every_step_and_writes_its_summary(tmp_path):
    out = tmp_path / "demo"
    arguments = [
        "--out", str(out), "--identities", "8", "--test-identities", "6", "--images-per-identity", "4",
        "--image-size", "32", "--epochs", "1", "--batch-size", "8",
    ]
    assert main(arguments) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["verification"]["accuracy_mean"] <= 1.0 and summary["verification"]["pairs"] > 0
    assert summary["serving"]["images"] == 8 and summary["serving"]["max_abs_difference"] < 1e-4
    for path in ("samples.png", "report/report.json", "models/synthfaces/1/saved_model.pb", "run/backbone.weights.h5"):
        assert (out / path).is_file(), path
    assert main(arguments) == 0  # a second run reuses every finished step
