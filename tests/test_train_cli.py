"""trainers.train end to end: clear errors, the work dir, and resuming after SIGKILL."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from tfface.training.callbacks import HistoryFile
from trainers.train import main

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """4 identities x 12 images of 20x20: each identity a bright square at its own place, plus noise."""
    out = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    with ShardedTFRecordWriter(out, prefix="train", examples_per_shard=20) as writer:
        for label in range(NUM_CLASSES):
            for _ in range(12):
                image = rng.integers(0, 60, size=(20, 20, 3)).astype(np.uint8)
                row, col = divmod(label, 2)
                image[2 + 9 * row : 8 + 9 * row, 2 + 9 * col : 8 + 9 * col] = 230
                writer.write(make_example(image, label))
    return out


def config_file(tmp_path: Path, data_dir: Path, **sections) -> str:
    text = (
        f"backbone: {{name: tiny, options: {{embedding_size: 8}}}}\n"
        f"head: {{name: softmax}}\n"
        f"data: {{train: {data_dir}, crop_size: [16, 16], shuffle_buffer: 64}}\n"
        f"train: {{epochs: 2, batch_size: 8, verbose: 2}}\n"
        f"schedule: {{name: constant, learning_rate: 0.05}}\n"
        f"work_dir: {tmp_path / 'run'}\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["backbone.name=resnet9000"], "error: unknown backbone 'resnet9000'; available: "),
        (["head.name=magicface"], "error: unknown head 'magicface'; available: "),
        (["train.epoch=3"], "error: unknown config key 'train.epoch'"),
        (["data.train=/nowhere/at/all"], "error: data.train: folder not found: /nowhere/at/all"),
    ],
)
def test_bad_input_is_one_clear_error_line(tmp_path, tiny_data, capsys, overrides, message):
    sets = [item for override in overrides for item in ("--set", override)]
    assert main(["--config", config_file(tmp_path, tiny_data), *sets]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith(message), error_lines


def test_work_dir_with_a_file_in_the_way_is_one_clear_error_line(tmp_path, tiny_data, capsys):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    assert main(["--config", config_file(tmp_path, tiny_data), "--set", f"work_dir={in_the_way / 'run'}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: work_dir {in_the_way / 'run'}: {in_the_way} is not a folder"


def test_training_fills_the_work_dir_and_lowers_the_loss(tmp_path, tiny_data):
    assert main(["--config", config_file(tmp_path, tiny_data), "--set", "train.epochs=3"]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["input_shape"] == [16, 16, 3]
    for name in ("config.yaml", "run.json", "history.csv", "backbone.weights.h5", "head.weights.npz", "backup"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-001.weights.h5", "epoch-002.weights.h5", "epoch-003.weights.h5"
    ]
    assert list(run.rglob("*partial*")) == []
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["loss"]) for row in rows]
    assert losses[-1] < losses[0]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_data):
    config = config_file(tmp_path, tiny_data)
    command = [
        sys.executable, "-m", "trainers.train", "--config", config,
        "--set", "train.epochs=3", "--set", "train.steps_per_epoch=150",
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    metadata = tmp_path / "run" / "backup" / "training_metadata.json"
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not metadata.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert metadata.exists(), "the first run wrote no backup"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    assert json.loads(metadata.read_text())["epoch"] == 1

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Epoch 1/3" not in second.stdout and "Epoch 2/3" in second.stdout
    assert json.loads(metadata.read_text())["epoch"] == 3
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(tmp_path / "run" / "history.csv"))]
    assert epochs == [1, 2, 3]  # counted from 1, as the console's "Epoch 2/3" counts


def test_history_csv_is_renamed_into_place_every_epoch_and_keeps_the_earlier_rows(tmp_path, monkeypatch):
    """Two runs (the second a resumed one) log three epochs: each epoch's file is written to a temporary name in the
    same folder and renamed over history.csv; the rows are Keras' CSVLogger layout (epoch, then sorted keys, \\r\\n)
    without its val_* columns of NA for values never measured."""
    ours = tmp_path / "ours" / "history.csv"
    ours.parent.mkdir()
    renamed = []

    def recording_replace(source, target, replace=os.replace):
        assert Path(source).parent == Path(target).parent and Path(source) != Path(target)
        renamed.append(Path(target))
        replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    for epochs in ((1, 2), (3,)):
        history = HistoryFile(str(ours))
        for epoch in epochs:
            history.add(epoch, {"loss": 1.0 / epoch, "accuracy": 0.25 * (epoch - 1)})
            history.write()
    assert renamed == [ours] * 3
    expected = "epoch,accuracy,loss\r\n1,0.0,1.0\r\n2,0.25,0.5\r\n3,0.5,0.3333333333333333\r\n"
    assert ours.read_bytes() == expected.encode()
    rows = list(csv.DictReader(open(ours, newline="")))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and float(rows[2]["loss"]) == 1 / 3
    assert os.listdir(ours.parent) == ["history.csv"]


def write_pairs_folder(root: Path) -> Path:
    """An LFW-layout folder (one sub-folder per identity, pairs.txt with 2 folds) of the tiny_data patterns."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in range(NUM_CLASSES):
        (root / f"id{label}").mkdir(parents=True)
        for number in (1, 2):
            image = rng.integers(0, 60, size=(20, 20, 3)).astype(np.uint8)
            row, col = divmod(label, 2)
            image[2 + 9 * row : 8 + 9 * row, 2 + 9 * col : 8 + 9 * col] = 230
            Image.fromarray(image).save(root / f"id{label}" / f"id{label}_{number:04d}.png")
    lines = ["2 2"]
    for fold in range(2):
        lines += [f"id{2 * fold} 1 2", f"id{2 * fold + 1} 1 2"]
        lines += [f"id{2 * fold} 1 id{2 * fold + 1} 2", f"id{2 * fold + 1} 1 id{(2 * fold + 2) % 4} 1"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_periodic_verification_joins_the_history(tmp_path, tiny_data):
    pairs_dir = write_pairs_folder(tmp_path / "pairs")
    overrides = ["--set", f"evaluation.pairs_dir={pairs_dir}", "--set", "evaluation.image_size=[16, 16]"]
    assert main(["--config", config_file(tmp_path, tiny_data), *overrides]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    accuracies = [float(row["verification_accuracy"]) for row in rows]
    assert len(accuracies) == 2 and all(0.0 <= value <= 1.0 for value in accuracies)
    assert all(float(row["verification_auc"]) >= 0.0 for row in rows)


def test_missing_pairs_folder_is_one_clear_error(tmp_path, tiny_data, capsys):
    overrides = ["--set", f"evaluation.pairs_dir={tmp_path / 'none'}"]
    assert main(["--config", config_file(tmp_path, tiny_data), *overrides]) == 2
    assert "evaluation.pairs_dir: no pairs.txt in" in capsys.readouterr().err


def test_stages_run_one_after_the_other(tmp_path, tiny_data, capsys):
    stages = "[{name: warm, epochs: 1, freeze: [backbone]}, {name: joint, epochs: 2}]"
    assert main(["--config", config_file(tmp_path, tiny_data), "--set", f"train.stages={stages}"]) == 0
    output = capsys.readouterr().out
    assert "stage warm epochs 1-1" in output and "stage joint epochs 2-3" in output
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    bad = "[{epochs: 1, plugins: [nothing]}]"
    assert main(["--config", config_file(tmp_path, tiny_data), "--set", f"train.stages={bad}"]) == 2
    assert "unknown plug-in(s) nothing" in capsys.readouterr().err


def test_a_recipe_asks_the_data_only_for_what_its_enabled_parts_read(tmp_path, tiny_data, capsys):
    """tiny_data has no landmarks: asked for in data.features, or by an enabled APRN, the run stops with one line
    naming both fixes; with APRN switched off and data.features=[] nothing asks for them."""
    from trainers.train import prepare, requested_features
    from tfface.training.config import load_config

    aprn = ("branches=[{name: aprn, weight: 0.2, enabled: %s, options: {objective: part1, stage: stage2, num_landmarks: 5}}]")
    config = config_file(tmp_path, tiny_data)
    for overrides in (["data.features=[landmarks]"], [aprn % "true"]):
        sets = [item for override in overrides for item in ("--set", override)]
        assert main(["--config", config, *sets]) == 2
        error_lines = capsys.readouterr().err.strip().splitlines()
        assert len(error_lines) == 1, error_lines
        assert error_lines[0].startswith("error: feature 'landmarks' was requested, but data set 'train'")
        assert "(present in 0 of 48 examples)" in error_lines[0]
        assert "tools.align --no-face skip" in error_lines[0] and "--set data.features=[]" in error_lines[0]
    prepared = prepare(load_config(config, ["data.features=[]", aprn % "false"]))
    assert set(next(iter(prepared.dataset.take(1)))) == {"image", "label"}
    assert requested_features(load_config(config, ["data.features=[pose]"]), prepared.trainer) == ("pose",)
