"""Faults injected into training (issue 19, items 1-5 and 14): each test makes the fault happen for real (a NaN
learning rate, a SIGKILL at each point of an epoch's end, a read-only or size-limited work dir, corrupt records,
bad config values) and checks the one-line error, the exit status and the files left behind."""
import csv
import errno
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from tfface.training.callbacks import EpochCommit
from trainers.train import main

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4


def write_tiny_data(out: Path, examples_per_shard: int = 20) -> Path:
    """4 identities x 12 images of 20x20: each identity a bright square at its own place, plus noise."""
    rng = np.random.default_rng(0)
    with ShardedTFRecordWriter(out, prefix="train", examples_per_shard=examples_per_shard) as writer:
        for label in range(NUM_CLASSES):
            for _ in range(12):
                image = rng.integers(0, 60, size=(20, 20, 3)).astype(np.uint8)
                row, col = divmod(label, 2)
                image[2 + 9 * row : 8 + 9 * row, 2 + 9 * col : 8 + 9 * col] = 230
                writer.write(make_example(image, label))
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("tiny_data"))


def config_file(tmp_path: Path, data_dir: Path, work_dir: Path = None) -> str:
    text = (
        "backbone: {name: tiny, options: {embedding_size: 8}}\n"
        "head: {name: softmax}\n"
        f"data: {{train: {data_dir}, crop_size: [16, 16], shuffle_buffer: 64}}\n"
        "train: {epochs: 2, batch_size: 8, verbose: 2}\n"
        "schedule: {name: constant, learning_rate: 0.05}\n"
        f"work_dir: {work_dir or tmp_path / 'run'}\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def history_epochs(run: Path) -> list:
    with open(run / "history.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def error_lines(capsys) -> list:
    return capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------------------------------ 1. NaN / Inf
def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_the_last_finite_epoch(tmp_path, tiny_data,
                                                                                              capsys):
    config = config_file(tmp_path, tiny_data)
    run = tmp_path / "run"
    assert main(["--config", config, "--set", "train.epochs=1"]) == 0
    first = run / "checkpoints" / "epoch-001.weights.h5"
    kept = digest(first)
    history = (run / "history.csv").read_bytes()
    final_weights = digest(run / "backbone.weights.h5")
    capsys.readouterr()

    status = main(["--config", config, "--set", "train.epochs=6", "--set", "schedule.learning_rate=1000.0"])
    lines = error_lines(capsys)
    assert status == 1
    stopped = re.fullmatch(r"error: training stopped: the loss became (nan|inf|-inf) at epoch (\d+), step (\d+); "
                           r"the backup and checkpoints of the last finite epoch are kept, nothing was exported",
                           lines[0])
    assert len(lines) == 1 and stopped, lines
    last_finite = int(stopped.group(2)) - 1
    assert last_finite >= 1 and 1 <= int(stopped.group(3)) <= 6  # 48 images in batches of 8: 6 steps an epoch
    assert digest(first) == kept
    assert json.loads((run / "backup" / "training_metadata.json").read_text())["epoch"] == last_finite
    backup = run / "backup" / f"epoch-{last_finite:03d}.weights.h5"
    assert digest(backup) == digest(run / "checkpoints" / backup.name)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f"epoch-{n:03d}.weights.h5" for n in range(1, last_finite + 1)]
    assert history_epochs(run) == list(range(1, last_finite + 1))
    assert (run / "history.csv").read_bytes().startswith(history)
    assert digest(run / "backbone.weights.h5") == final_weights  # the finished first run's, not NaN ones
    assert list(run.rglob("*partial*")) == []


def test_export_refuses_weights_that_are_not_finite(tmp_path, tiny_data, capsys):
    import h5py

    from tools.export import main as export_main

    assert main(["--config", config_file(tmp_path, tiny_data), "--set", "train.epochs=1"]) == 0
    with h5py.File(tmp_path / "run" / "backbone.weights.h5", "r+") as weights:  # the fault: one NaN weight
        datasets = []
        weights.visititems(lambda name, item: datasets.append(item) if hasattr(item, "shape") else None)
        values = datasets[0][...]
        values.flat[0] = np.nan
        datasets[0][...] = values
    capsys.readouterr()
    out = tmp_path / "models" / "tiny" / "1"
    assert export_main(["--work_dir", str(tmp_path / "run"), "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "hold NaN or infinity" in lines[0] and "backbone.weights.h5" in lines[0], lines
    assert not out.parent.exists()


# ------------------------------------------------------------------------------------------------ 4. kills
KILL_SCRIPT = """
import os, signal, sys
from tfface.training.callbacks import EpochCommit
point, when = sys.argv[1], sys.argv[2]
original = getattr(EpochCommit, point)
def killed(self, epoch, *rest):
    if when == "after":
        original(self, epoch, *rest)
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if when == "before":
        original(self, epoch, *rest)
setattr(EpochCommit, point, killed)
from trainers.train import main
sys.exit(main(sys.argv[3:]))
"""

KILL_POINTS = [("save_backup", "before")] + [(step, "after") for step in EpochCommit.STEPS]


@pytest.mark.parametrize("point, when", KILL_POINTS, ids=[f"{when}_{point}" for point, when in KILL_POINTS])
def test_a_kill_at_any_point_of_an_epochs_end_leaves_files_that_agree(tmp_path, tiny_data, capsys, point, when):
    """SIGKILL in epoch 2's end, before its first step or after each step; then the same command again: every epoch
    is trained once, and the backup, its metadata, the checkpoints and the history agree."""
    config = config_file(tmp_path, tiny_data)
    run = tmp_path / "run"
    arguments = ["--config", config, "--set", "train.epochs=3"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, point, when, *arguments], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    committed = json.loads((run / "backup" / "training_metadata.json").read_text())
    expected = 2 if point in ("commit", "remove_previous") else 1
    assert committed == {"epoch": expected, "weights": f"epoch-{expected:03d}.weights.h5"}
    assert digest(run / "backup" / committed["weights"]) == digest(run / "checkpoints" / committed["weights"])

    capsys.readouterr()
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert f"Epoch {expected + 1}/3" in output and f"Epoch {expected}/3" not in output
    assert history_epochs(run) == [1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch-00{n}.weights.h5" for n in (1, 2, 3)]
    assert sorted(p.name for p in (run / "backup").iterdir()) == ["epoch-003.weights.h5", "training_metadata.json"]
    assert json.loads((run / "backup" / "training_metadata.json").read_text())["epoch"] == 3
    assert list(run.rglob("*partial*")) == []


# ------------------------------------------------------------------------------------------------ 5. read-only / full
def _make_read_only(folder: Path) -> None:
    """chmod for a user; the immutable attribute for root (whom permissions do not stop)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True)
    else:
        folder.chmod(0o555)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return
    (folder / "probe").unlink()
    pytest.skip(f"cannot make {folder} read-only here")


def test_a_read_only_work_dir_is_one_error_line_before_training(tmp_path, tiny_data, capsys):
    work_dir = tmp_path / "readonly"
    work_dir.mkdir()
    _make_read_only(work_dir)
    try:
        assert main(["--config", config_file(tmp_path, tiny_data, work_dir)]) == 2
    finally:
        subprocess.run(["chattr", "-i", str(work_dir)], check=False, capture_output=True)
        work_dir.chmod(0o755)
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: work_dir {work_dir}: cannot write there: [Errno "), lines
    assert list(work_dir.iterdir()) == []


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_while_saving_is_one_error_line_and_leaves_no_partial_file(tmp_path, tiny_data):
    """Files may grow to 64 KiB only (RLIMIT_FSIZE): the small files fit, the first weights file does not."""
    config = config_file(tmp_path, tiny_data)
    (tmp_path / "config.yaml").write_text(
        Path(config).read_text().replace("embedding_size: 8", "embedding_size: 512"))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "trainers.train", "--config", config], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    run = tmp_path / "run"
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines == [f"error: cannot write {run / 'backup' / 'epoch-001.weights.h5'}: [Errno {errno.EFBIG}] "
                     f"{os.strerror(errno.EFBIG)}"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert list(run.rglob("*partial*")) == [] and not (run / "backup" / "training_metadata.json").exists()


# ------------------------------------------------------------------------------------------------ 14. measured only
def test_epochs_without_a_verification_pass_log_no_verification_numbers(tmp_path, tiny_data):
    import tensorflow as tf

    from tests.test_train_cli import write_pairs_folder

    pairs_dir = write_pairs_folder(tmp_path / "pairs")
    overrides = ["--set", f"evaluation.pairs_dir={pairs_dir}", "--set", "evaluation.image_size=[16, 16]",
                 "--set", "evaluation.every_epochs=2", "--set", "train.epochs=2"]
    assert main(["--config", config_file(tmp_path, tiny_data), *overrides]) == 0
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = ("verification_accuracy", "verification_accuracy_std", "verification_auc")
    assert [row[key] for row in rows[:1] for key in keys] == ["", "", ""]
    assert all(0.0 <= float(rows[1][key]) <= 1.0 for key in keys)
    assert not any(key.startswith("val_") for key in rows[0])
    steps = []
    for events in (tmp_path / "run" / "logs" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            steps += [event.step for value in event.summary.value if value.tag == "epoch_verification_accuracy"]
    assert steps == [1]


# ------------------------------------------------------------------------------------------------ 2. corrupt data
def _records(shard: Path) -> list:
    import tensorflow as tf

    return [bytes(record.numpy()) for record in tf.data.TFRecordDataset(str(shard))]


def _rewrite(shard: Path, records: list) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records:
            writer.write(record)


def _replace_record(shard: Path, index: int, change) -> None:
    """Record `index` of `shard` replaced by change(tf.train.Example) (the shard rewritten, CRCs valid)."""
    import tensorflow as tf

    records = _records(shard)
    example = tf.train.Example.FromString(records[index])
    change(example)
    records[index] = example.SerializeToString()
    _rewrite(shard, records)


def _set_label(value):
    def change(example):
        example.features.feature["label"].int64_list.value[:] = [value]
    return change


def _drop(key):
    def change(example):
        del example.features.feature[key]
    return change


def _garble_image(example):
    example.features.feature["image/encoded"].bytes_list.value[:] = [b"\x89PNG\r\n\x1a\n not an image at all"]


def _truncate(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[:-30])


def _flip_bytes(shard: Path) -> None:
    """Flips 4 bytes inside record 5's payload: its CRC no longer matches."""
    offset = sum(len(record) + 16 for record in _records(shard)[:5]) + 12 + 40
    data = bytearray(shard.read_bytes())
    data[offset:offset + 4] = bytes(255 - value for value in data[offset:offset + 4])
    shard.write_bytes(bytes(data))


# (fault, shard, the injection, the bad record's index, its problem)
CORRUPTIONS = [
    ("truncated_shard", 3, _truncate, 11, "truncated record at "),
    ("flipped_bytes", 1, _flip_bytes, 5, "corrupted record at "),
    ("undecodable_image", 2, lambda shard: _replace_record(shard, 4, _garble_image), 4, "'image/encoded' does not decode"),
    ("label_too_large", 0, lambda shard: _replace_record(shard, 7, _set_label(9)), 7, "label 9 outside [0, 4)"),
    ("negative_label", 0, lambda shard: _replace_record(shard, 2, _set_label(-3)), 2, "label -3 outside [0, 4)"),
    ("no_label", 1, lambda shard: _replace_record(shard, 0, _drop("label")), 0, "no 'label'"),
    ("no_image", 2, lambda shard: _replace_record(shard, 9, _drop("image/encoded")), 9, "no 'image/encoded'"),
]


@pytest.mark.parametrize("fault, shard_number, inject, index, problem", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_bad_record_is_one_line_naming_shard_record_and_problem_before_training(
        tmp_path, capsys, fault, shard_number, inject, index, problem):
    from tools.make_tfrecords import main as make_tfrecords

    data = write_tiny_data(tmp_path / "data", examples_per_shard=12)
    shard = data / f"train-{shard_number:05d}.tfrecord"
    inject(shard)

    assert make_tfrecords(["describe", str(data), "--verify"]) == 1
    bad = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("bad: ")]
    assert len(bad) == 1 and bad[0].startswith(f"bad: {shard} record {index}: {problem}"), bad

    assert main(["--config", config_file(tmp_path, data)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: data.train: {shard} record {index}: {problem}"), lines
    assert "1 bad record(s) in all" in lines[0]
    assert not (tmp_path / "run" / "backup").exists()


def test_on_bad_record_skip_trains_without_them_and_logs_the_count_per_epoch(tmp_path, capsys):
    from tools.make_tfrecords import main as make_tfrecords

    data = write_tiny_data(tmp_path / "data", examples_per_shard=12)
    _replace_record(data / "train-00000.tfrecord", 3, _set_label(9))
    _replace_record(data / "train-00001.tfrecord", 5, _garble_image)
    _truncate(data / "train-00003.tfrecord")  # its last record is lost
    assert make_tfrecords(["describe", str(data), "--verify"]) == 1
    capsys.readouterr()

    # 48 records - 2 bad - 1 unreadable = 45 = 9 steps of 5: one pass over the data per epoch
    overrides = ["--set", "data.on_bad_record=skip", "--set", "train.batch_size=5", "--set", "train.epochs=2"]
    assert main(["--config", config_file(tmp_path, data), *overrides]) == 0
    output = capsys.readouterr().out
    assert "data.on_bad_record=skip: leaving out 3 bad record(s) (1 unreadable), first: " in output
    assert "2 epochs x 9 steps" in output
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["skipped_records"]) for row in rows] == [2.0, 2.0]


# ------------------------------------------------------------------------------------------------ 3. config values
@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "train.epochs: 'ten' is not allowed (expected an integer >= 1 and <= 100000)"),
    ("train.epochs=0", "train.epochs: 0 is not allowed (expected an integer >= 1 and <= 100000)"),
    ("train.epochs=-2", "train.epochs: -2 is not allowed (expected an integer >= 1 and <= 100000)"),
    ("schedule.learning_rate=nan", "schedule.learning_rate: 'nan' is not allowed (expected a finite number > 0 "
                                   "and <= 1e+06)"),
    ("schedule.learning_rate=.nan", "schedule.learning_rate: nan is not allowed (expected a finite number > 0 "
                                   "and <= 1e+06)"),
    ("schedule.learning_rate=-0.1", "schedule.learning_rate: -0.1 is not allowed (expected a finite number > 0 "
                                   "and <= 1e+06)"),
    ("train.steps_per_epoch=-5", "train.steps_per_epoch: -5 is not allowed (expected an integer >= 1 and <= "
                                "1000000000, or null)"),
    ("train.batch_size=8.5", "train.batch_size: 8.5 is not allowed (expected an integer >= 1 and <= 1048576)"),
    ("optimizer.momentum=1.5", "optimizer.momentum: 1.5 is not allowed (expected a finite number >= 0 and < 1)"),
    ("data.flip=maybe", "data.flip: 'maybe' is not allowed (expected true or false)"),
    ("train.precision=fp8", "train.precision: 'fp8' is not allowed (expected one of float32, mixed_float16, "
                            "mixed_bfloat16)"),
    ("data.on_bad_record=ignore", "data.on_bad_record: 'ignore' is not allowed (expected one of error, skip)"),
    ("train.stages=[{epochs: 0}]", "train.stages[0].epochs: 0 is not allowed (expected an integer >= 1 and <= "
                                 "100000)"),
])
def test_a_config_value_of_the_wrong_type_or_range_is_one_line_naming_key_value_and_allowed(
        tmp_path, tiny_data, capsys, override, message):
    assert main(["--config", config_file(tmp_path, tiny_data), "--set", override]) == 2
    assert error_lines(capsys) == [f"error: {message}"]
    assert not (tmp_path / "run").exists()


def test_a_backup_written_before_the_commit_step_existed_resumes(tmp_path, tiny_data, capsys):
    """Keras' BackupAndRestore layout (latest.weights.h5, metadata {epoch, batch}), as runs started before."""
    config = config_file(tmp_path, tiny_data)
    backup = tmp_path / "run" / "backup"
    assert main(["--config", config, "--set", "train.epochs=1"]) == 0
    (backup / "epoch-001.weights.h5").rename(backup / "latest.weights.h5")
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    capsys.readouterr()
    assert main(["--config", config]) == 0
    output = capsys.readouterr().out
    assert "Epoch 2/2" in output and "Epoch 1/2" not in output
    assert sorted(p.name for p in backup.iterdir()) == ["epoch-002.weights.h5", "training_metadata.json"]
