"""Faults a hostile user still found (issue 28, training and files: items 1-4): partial files a kill left in the work
dir's top folder, full disks under TensorBoard and export, poisoned config files and overrides. Each test makes the
fault happen for real and checks the one-line error, the exit status and the files left behind."""
import os
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
