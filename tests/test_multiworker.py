"""Multi-worker training: two worker processes on 127.0.0.1, each given TF_CONFIG, train a tiny model through
`trainers.train` with MultiWorkerMirroredStrategy and finish with identical weights."""
import csv
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from tfface.errors import ConfigError
from tfface.training.strategy import select_strategy, tf_config_workers

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4
TIMEOUT_SECONDS = 300


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """4 identities x 8 images of 20x20 in two shards: each identity a bright square at its own place."""
    out = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    with ShardedTFRecordWriter(out, prefix="train", examples_per_shard=16) as writer:
        for label in range(NUM_CLASSES):
            for _ in range(8):
                image = rng.integers(0, 60, size=(20, 20, 3)).astype(np.uint8)
                row, col = divmod(label, 2)
                image[2 + 9 * row : 8 + 9 * row, 2 + 9 * col : 8 + 9 * col] = 230
                writer.write(make_example(image, label))
    return out


def free_ports(count: int):
    """`count` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def h5_arrays(path: Path):
    """Every dataset of an .h5 file by its path."""
    arrays = {}

    def keep(name, item):
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path, "r") as handle:
        handle.visititems(keep)
    return arrays


def run_workers(commands, environments):
    """Starts every command, waits for all within TIMEOUT_SECONDS in total, kills what is left; (codes, outputs)."""
    processes = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command, env in zip(commands, environments)
    ]
    deadline = time.monotonic() + TIMEOUT_SECONDS
    outputs = []
    try:
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                outputs.append(f"timed out after {TIMEOUT_SECONDS}s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [process.returncode for process in processes], outputs


def test_two_workers_train_in_lockstep_to_identical_weights(tmp_path, tiny_data):
    config = tmp_path / "config.yaml"
    config.write_text(
        "backbone: {name: tiny, options: {embedding_size: 8, sync_batchnorm: true}}\n"
        "head: {name: arcface, options: {scale: 16.0, margin: 0.2}}\n"
        f"data: {{train: {tiny_data}, crop_size: [16, 16], shuffle_buffer: 32}}\n"
        "train: {epochs: 1, steps_per_epoch: 2, batch_size: 8, verbose: 2, strategy: multi_worker}\n"
        "schedule: {name: constant, learning_rate: 0.05}\n"
    )
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    commands, environments = [], []
    for index in range(2):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        environments.append({**os.environ, "TF_CONFIG": json.dumps(task), "TF_CPP_MIN_LOG_LEVEL": "2"})
        work_dir = tmp_path / f"worker{index}"
        commands.append(
            [sys.executable, "-m", "trainers.train", "--config", str(config), "--set", f"work_dir={work_dir}"]
        )

    codes, outputs = run_workers(commands, environments)

    for code, output in zip(codes, outputs):
        assert code == 0, output[-4000:]
        assert "batch 8 over 2 replica(s)" in output, output[-4000:]
    first, second = tmp_path / "worker0", tmp_path / "worker1"
    for work_dir in (first, second):
        with open(work_dir / "history.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))
    backbone_first = h5_arrays(first / "backbone.weights.h5")
    backbone_second = h5_arrays(second / "backbone.weights.h5")
    assert backbone_first.keys() == backbone_second.keys() and len(backbone_first) > 10
    for name, values in backbone_first.items():
        np.testing.assert_array_equal(values, backbone_second[name], err_msg=name)
    with np.load(first / "head.weights.npz") as head_first, np.load(second / "head.weights.npz") as head_second:
        for name in head_first.files:
            np.testing.assert_array_equal(head_first[name], head_second[name])


def test_tf_config_is_read_and_checked(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == 0
    with pytest.raises(ConfigError, match="multi_worker needs the TF_CONFIG environment variable"):
        select_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}}))
    assert tf_config_workers() == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG must be a JSON object"):
        tf_config_workers()
    with pytest.raises(ConfigError, match="unknown strategy 'ring'; available: auto, mirrored, multi_worker, default"):
        select_strategy("ring")
