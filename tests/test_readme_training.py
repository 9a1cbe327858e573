"""README "Training on your data", run as written: from a folder of raw photos (three CFP identities, linked as
symlinked identity folders) through align, TFRecords, training, export, evaluation and the gRPC server to an
embedding served by it, equal to the exported model's own. Skipped without ../shared/data.

The commands come from the fenced block after README_MARKER, word for word. The test supplies only the data and
the size of the run: photos/ (3 identities, 42 photos), pairs.csv (written from the crops, in the format the
README describes), a free port instead of 8500, and `--set` overrides appended to the training command (one epoch
of two steps of 8; a later --set wins). Each `python -m MODULE ...` line runs as MODULE.main(argv) in this process
(TensorFlow is imported once); the line ending in `&` (the server) runs as its own process, as in a shell.
"""
import importlib
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README_MARKER = "<!-- readme-test: training-on-your-data -->"
IDENTITIES = ("001", "002", "003")
SMALL_RUN = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=8"]
STARTUP_NOTICES = ("cudart_stub", "cuInit", "oneDNN", "cpu_feature_guard", "absl::InitializeLog")


def readme_commands() -> list[str]:
    """The shell lines of the README block after README_MARKER: comments dropped, continuations joined."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(README_MARKER):].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def write_pairs_csv(path: Path, crops: Path) -> None:
    """10 folds of one genuine and one impostor pair of aligned crops: header, paths relative to the CSV, 1/0."""
    faces = {identity: sorted((crops / identity).rglob("*.png")) for identity in IDENTITIES}
    rows = ["path1,path2,issame,fold"]
    for fold in range(10):
        first, second = IDENTITIES[fold % 3], IDENTITIES[(fold + 1) % 3]
        same = faces[first][fold % len(faces[first])], faces[first][(fold + 1) % len(faces[first])]
        other = faces[first][(fold + 2) % len(faces[first])], faces[second][fold % len(faces[second])]
        for (one, two), issame in ((same, 1), (other, 0)):
            rows.append(f"{one.relative_to(path.parent)},{two.relative_to(path.parent)},{issame},{fold}")
    path.write_text("\n".join(rows) + "\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_in_background(argv: list[str], cwd: Path, env: dict) -> tuple[subprocess.Popen, list[str]]:
    """A `python -m ... &` line as its own process; returns it and the list its output lines are read into."""
    process = subprocess.Popen([sys.executable, *argv[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return process, lines


def test_readme_training_on_your_data_runs_as_written(shared_data, tmp_path, monkeypatch):
    from tfface.export import load_exported

    commands = readme_commands()
    assert [shlex.split(line)[2] for line in commands] == [
        "tools.align", "tools.make_tfrecords", "tools.make_tfrecords", "trainers.train", "tools.export",
        "tools.evaluate", "serving.server", "serving.client"]
    (tmp_path / "photos").mkdir()
    for identity in IDENTITIES:
        (tmp_path / "photos" / identity).symlink_to(shared_data / "cfp" / "images" / identity, target_is_directory=True)
    (tmp_path / "trainers").symlink_to(REPO / "trainers", target_is_directory=True)  # the config path, as in a clone
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest's setting; a user's shell has none
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # align's worker processes
    port = free_port()
    server, output = None, []
    try:
        for line in commands:
            line = line.replace("--port 8500", f"--port {port}").replace("127.0.0.1:8500", f"127.0.0.1:{port}")
            argv = shlex.split(line.removesuffix("&"))
            assert argv[:2] == ["python", "-m"], line
            module, arguments = argv[2], argv[3:]
            if module == "trainers.train":
                arguments += SMALL_RUN
            if module == "tools.evaluate":
                write_pairs_csv(tmp_path / "pairs.csv", tmp_path / "aligned" / "112x112")
            if line.endswith("&"):
                server, output = start_in_background(argv, tmp_path, env)
                deadline = time.time() + 300
                while not any(text.startswith("serving mine on ") for text in output):
                    assert server.poll() is None and time.time() < deadline, "".join(output)
                    time.sleep(0.2)
                continue
            assert importlib.import_module(module).main(arguments) == 0, line
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    assert not [text for text in output if any(notice in text for notice in STARTUP_NOTICES)], "".join(output)

    report = (tmp_path / "aligned" / "align_report.csv").read_text().splitlines()
    assert len(report) == 1 + 42 and sum(",aligned," in row for row in report) >= 38  # one CFP profile has no face
    assert (tmp_path / "runs" / "mine" / "history.csv").read_text().splitlines()[1].startswith("1,")
    files = (tmp_path / "emb.txt").read_text().splitlines()
    served = np.load(tmp_path / "emb.npy")
    assert len(files) == sum(",aligned," in row for row in report) and served.shape == (len(files), 512)
    images = np.stack([np.asarray(Image.open(name).convert("RGB")) for name in files])
    local = load_exported(tmp_path / "models" / "mine")(images)
    np.testing.assert_allclose(served, local, atol=1e-5)
    assert re.search(r"\| mine \| \S+ \| 20 \| ", (tmp_path / "report" / "report.md").read_text())
