"""Faults a hostile user still found (issue 28, training and files: items 1-4): partial files a kill left in the work
dir's top folder, full disks under TensorBoard and export, poisoned config files and overrides. Each test makes the
fault happen for real and checks the one-line error, the exit status and the files left behind."""
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_reliability_training import REPO, config_file, error_lines, write_tiny_data
from trainers.train import main


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("tiny_data"))


# ------------------------------------------------------------------------------------------------ 3. config files
BILLION_LAUGHS = "".join(
    [f"a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 9)]
)


@pytest.mark.parametrize("name, text, message", [
    ("self.yaml", "base: ./self.yaml\n", "{path}: `base` loops back to itself"),
    ("self.yaml", "base: ../configs/self.yaml\n", "{path}: `base` loops back to itself"),
    ("list.yaml", "base: [1, 2]\n", "{path}: base: [1, 2] is not allowed (expected the path of a config file)"),
    ("laughs.yaml", "head:\n  name: softmax\n  options:\n" + "".join(
        "    " + line + "\n" for line in BILLION_LAUGHS.splitlines()),
     "{path}: invalid YAML: more than 100000 values once its aliases (*name) are expanded"),
    ("binary.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "{path}: not a UTF-8 text file (byte 0: invalid start byte)"),
], ids=["base_itself_as_dot", "base_itself_through_parent", "base_a_list", "billion_laughs", "binary_file"])
def test_a_poisoned_config_file_is_one_line_naming_it(tmp_path, capsys, name, text, message):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["--config", str(path)]) == 2
    assert error_lines(capsys) == ["error: " + message.format(path=path)]


HUGE = "9" * 5000


@pytest.mark.parametrize("override, message", [
    ("data.image_size=[99999999, 99999999]", "data.image_size: [99999999, 99999999] is not allowed (expected an "
                                            "integer >= 1 and <= 4096 or a pair [height, width] of them, or null)"),
    (f"train.epochs={HUGE}", f"--set train.epochs: invalid YAML value '{HUGE[:79]}... (4922 more characters): "
                             "Exceeds the limit (4300 digits) for integer string conversion"),
    ("train.batch_size=100000000000000000000", "train.batch_size: 100000000000000000000 is not allowed (expected an "
                                               "integer >= 1 and <= 1048576)"),
    ("seed=100000000000000000000000", "seed: 100000000000000000000000 is not allowed (expected an integer >= 0 and "
                                      "<= 4294967295)"),
    ("schedule.learning_rate=1.0e+9", "schedule.learning_rate: 1000000000.0 is not allowed (expected a finite number > 0 and "
                                     "<= 1e+06)"),
    ("optimizer.weight_decay=" + "1" * 400, "optimizer.weight_decay: " + "1" * 80 + "... (320 more characters) is "
                                            "not allowed (expected a finite number >= 0 and <= 1)"),
    ("evaluation.every_epochs=1000001", "evaluation.every_epochs: 1000001 is not allowed (expected an integer >= 1 "
                                        "and <= 100000)"),
], ids=["image_size", "5000_digit_epochs", "batch_size_1e20", "seed_1e23", "learning_rate_1e9",
        "400_digit_weight_decay", "every_epochs"])
def test_a_numeric_key_out_of_its_range_is_one_line_naming_the_key(tmp_path, tiny_data, capsys, override, message):
    assert main(["--config", config_file(tmp_path, tiny_data), "--set", override]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "run").exists()


def test_aliases_within_the_bound_still_load(tmp_path, tiny_data, capsys):
    path = Path(config_file(tmp_path, tiny_data))
    path.write_text(path.read_text() + "optimizer: &opt {name: sgd, momentum: 0.8}\n"
                    "regularizers: [{name: center, weight: 0.01, options: {a: *opt}}]\n")
    from tfface.training.config import load_config

    config = load_config(str(path))
    assert config.optimizer.momentum == 0.8 and config.regularizers[0]["options"]["a"]["momentum"] == 0.8


# ------------------------------------------------------------------------------------------------ 1. stale partials
KILL_BEFORE_RENAME = """
import os, signal, sys
replace = os.replace
def killed(source, target, *rest, **options):
    if os.path.basename(target) == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(source, target, *rest, **options)
os.replace = killed
from trainers.train import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("name", ["history.csv", "head.weights.npz"])  # during an epoch; after training
def test_a_rerun_removes_the_partial_files_a_kill_before_a_rename_left(tmp_path, tiny_data, capsys, name):
    """SIGKILL just before the rename of a file in the work dir's top folder; the same command again."""
    arguments = ["--config", config_file(tmp_path, tiny_data), "--set", "train.epochs=1"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, name, *arguments], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    run = tmp_path / "run"
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert [path.name.split(".")[1] for path in run.glob(".*.partial*")] == [name.split(".")[0]]
    assert main(arguments) == 0
    assert list(run.rglob("*partial*")) == []
    assert (run / name).is_file()


def test_a_partial_file_of_a_running_process_is_left_alone(tmp_path):
    from tfface import atomic

    live = tmp_path / f".history.csv.{os.getppid()}.{'0' * 32}.partial"
    dead = tmp_path / "sub" / f".history.csv.{2 ** 22 + 1}.{'a' * 32}.partial.weights.h5"
    other = tmp_path / "notes.partial.txt"
    for path in (live, dead, other):
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    assert atomic.remove_stale_partial_files(tmp_path) == [str(dead)]
    assert live.exists() and other.exists() and not dead.exists()


# ------------------------------------------------------------------------------------------------ 2. full disks
def run_on_a_small_disk(folder: Path, size: str, argv: list) -> subprocess.CompletedProcess:
    """`python argv` with `folder` a fresh tmpfs of `size` (a real full disk: ENOSPC), mounted in a private user
    and mount namespace; skips where the kernel or the sandbox allows no such mount."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {folder}"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a small tmpfs in a user namespace here (unshare -rm)")
    command = f"mount -t tmpfs -o size={size} tmpfs {folder} && exec {sys.executable} \"$@\""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run(["unshare", "-rm", "sh", "-c", command, "sh", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_disk_full_before_tensorboards_writer_is_one_line_naming_the_file(tmp_path, tiny_data):
    """8 KiB: config.yaml and run.json fit, TensorBoard's first event does not."""
    disk = tmp_path / "disk"
    result = run_on_a_small_disk(disk, "8k", ["-m", "trainers.train", "--config", config_file(tmp_path, tiny_data),
                                              "--set", f"work_dir={disk / 'run'}"])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and re.fullmatch(
        rf"error: cannot write {re.escape(str(disk / 'run' / 'logs' / 'train'))}/events\.out\.tfevents\.\S+: "
        rf"\[Errno {errno.ENOSPC}\] No space left on device", lines[0]), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_export_onto_a_full_disk_is_one_line_and_leaves_no_partial_folder(tmp_path, tiny_data):
    assert main(["--config", config_file(tmp_path, tiny_data), "--set", "train.epochs=1"]) == 0
    disk = tmp_path / "disk"
    out = disk / "models" / "1"
    result = run_on_a_small_disk(disk, "64k", ["-m", "tools.export", "--work_dir", str(tmp_path / "run"),
                                               "--out", str(out)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        f"error: --out {out}: cannot write: [Errno {errno.ENOSPC}] No space left on device"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_a_tensorflow_error_about_a_file_becomes_its_os_error():
    import tensorflow as tf

    from tfface.errors import file_error

    full = file_error(tf.errors.ResourceExhaustedError(None, None, "/d/x.pb.tmp1; No space left on device\n\tmore"))
    assert (full.errno, full.strerror, full.filename) == (errno.ENOSPC, "No space left on device", "/d/x.pb.tmp1")
    assert file_error(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")) is None
