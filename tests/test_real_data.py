"""The baseline config on real faces (PIE32 from ../shared/data, converted with make_tfrecords)."""
import csv
from pathlib import Path

from tools.make_tfrecords import main as make_tfrecords
from tfface.training.config import load_config
from trainers.train import train


def test_baseline_trains_on_real_faces_to_over_90_percent(tmp_path, shared_data):
    data_dir = tmp_path / "pie32"
    assert make_tfrecords(["convert", "--input", str(shared_data / "pie32.npz"), "--out", str(data_dir)]) == 0
    config = load_config(
        str(Path(__file__).resolve().parents[1] / "trainers" / "configs" / "baseline_pie32.yaml"),
        [f"data.train={data_dir}", f"work_dir={tmp_path / 'run'}", "train.verbose=0", "train.strategy=default"],
    )
    train(config)
    with open(tmp_path / "run" / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["loss"]) for row in rows]
    assert float(rows[-1]["accuracy"]) > 0.9
    assert losses[-1] < 0.5 * losses[0] and losses[-1] == min(losses)
