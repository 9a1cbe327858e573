"""tfface.calibration and `tools.evaluate --calibrate`: thresholds against a hand count, and the thresholds written
into a SavedModel, a .tflite and an .onnx file read back by every format's loader."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfface.calibration import Calibration, calibrate, read_calibration, write_calibration
from tfface.deploy import export_file
from tfface.embedders import METADATA_FILE, load_embedder, metadata_path
from tfface.errors import ConfigError
from tfface.export import export_run
from tools.evaluate import main as evaluate_main

from test_export import INPUT_SHAPE, write_tiny_run

# six pairs; "same" means score > threshold
SCORES = [0.9, 0.8, 0.6, 0.5, 0.4, 0.1]
ISSAME = [True, True, False, True, False, False]


def test_thresholds_match_a_hand_count():
    # Midpoints 0.85, 0.7, 0.55, 0.45, 0.25 accept 1, 2, 3, 4, 5 pairs: accuracies 4/6, 5/6, 4/6, 5/6, 4/6; the
    # tie goes to the lower midpoint, 0.45.
    calibration = calibrate(SCORES, ISSAME, "hand", "hand.csv", "sum", 0.8, 0.1, far_target=0.4)
    assert calibration.threshold == pytest.approx(0.45) and calibration.accuracy == pytest.approx(5 / 6)
    # impostors 0.6, 0.4, 0.1: FAR 0.4 of 3 allows floor(1.2) = 1 above the threshold, so it is the 2nd highest
    assert calibration.far_threshold == pytest.approx(0.4)
    assert calibration.far == pytest.approx(1 / 3) and calibration.tar == pytest.approx(1.0)
    assert (calibration.pairs, calibration.impostor_pairs) == (6, 3)
    strict = calibrate(SCORES, ISSAME, "hand", "hand.csv", "sum", 0.8, 0.1, far_target=1e-3)
    assert strict.far_threshold == pytest.approx(0.6)  # 3 impostors cannot resolve 1e-3: none may pass
    assert strict.far == 0.0 and strict.tar == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="both same and different"):
        calibrate([0.1, 0.2], [True, True], "x", "x", "sum", 1.0, 0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{format: path} of one tiny run exported as a SavedModel, a .tflite and an .onnx file."""
    folder = tmp_path_factory.mktemp("calibration")
    run_dir = write_tiny_run(folder / "run")
    paths = {"savedmodel": export_run(run_dir, folder / "models" / "tiny" / "1")}
    for file_format in ("tflite", "onnx"):
        paths[file_format] = folder / f"tiny.{file_format}"
        export_file(run_dir, paths[file_format], file_format)
    return paths


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    """20 pairs over 8 random images at the model's input size: same pairs (an image and itself, slightly noised)
    and different pairs, in 2 folds."""
    folder = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(8, *INPUT_SHAPE)).astype(np.uint8)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index}.png")
        noisy = np.clip(image.astype(int) + rng.integers(-20, 21, size=image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{index}n.png")
    rows = ["path1,path2,issame,fold"]
    for index in range(20):
        first = index % 8
        second = f"{first}n" if index % 2 == 0 else str((first + 1 + index // 8) % 8)
        rows.append(f"{first}.png,{second}.png,{int(index % 2 == 0)},{index // 10}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def hand_best_threshold(scores: np.ndarray, issame: np.ndarray):
    """Best accuracy over midpoints, by brute force: every candidate counted with a loop."""
    values = sorted(set(scores.tolist()))
    candidates = [values[0] - 1e-6] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-6]
    best = None
    for threshold in candidates:
        accuracy = sum((score > threshold) == same for score, same in zip(scores, issame)) / len(scores)
        if best is None or accuracy > best[1]:
            best = (threshold, accuracy)
    return best


@pytest.mark.parametrize("file_format", ["savedmodel", "tflite", "onnx"])
def test_thresholds_round_trip_through_all_three_formats(models, pairs_csv, tmp_path, capsys, file_format):
    model = models[file_format]
    metadata_file = model / METADATA_FILE if file_format == "savedmodel" else metadata_path(model)
    before = json.loads(metadata_file.read_text())
    assert read_calibration(load_embedder(model)) is None  # a model without one says so: None

    assert evaluate_main(["--model", str(model), "--benchmark", f"mine={pairs_csv}", "--calibrate", "mine",
                          "--far", "0.1", "--out", str(tmp_path / "report")]) == 0
    assert f"written to {metadata_file}" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())["benchmarks"]["mine"]
    calibration = read_calibration(load_embedder(model))
    assert calibration.to_json() == report["calibration"]
    after = json.loads(metadata_file.read_text())
    assert {key: value for key, value in after.items() if key != "calibration"} == before  # nothing else changed

    # the thresholds against the embeddings computed here (flip sum, as tools.evaluate's default)
    embedder = load_embedder(model)
    rows = [line.split(",") for line in pairs_csv.read_text().splitlines()[1:]]
    first = embedder(np.stack([np.asarray(Image.open(pairs_csv.parent / row[0])) for row in rows]), flip=True)
    second = embedder(np.stack([np.asarray(Image.open(pairs_csv.parent / row[1])) for row in rows]), flip=True)
    scores = np.sum(first * second, axis=1).astype(np.float64)
    issame = np.array([row[2] == "1" for row in rows])
    threshold, accuracy = hand_best_threshold(scores, issame)
    assert calibration.threshold == pytest.approx(threshold, abs=1e-5)
    assert calibration.accuracy == pytest.approx(accuracy)
    assert calibration.far_threshold == pytest.approx(np.sort(scores[~issame])[::-1][1], abs=1e-5)  # 10 x 0.1 = 1
    assert (calibration.benchmark, calibration.pairs, calibration.flip) == ("mine", 20, "sum")
    assert calibration.accuracy_mean == pytest.approx(report["accuracy_mean"])


def test_calibrate_refuses_what_it_cannot_store(models, pairs_csv, tmp_path, capsys):
    model = str(models["onnx"])
    cases = [
        (["--calibrate", "other"], "--calibrate other: no --benchmark of that name (given: mine)"),
        (["--calibrate", "mine", "--flip", "concat"], "--calibrate needs --flip sum or none and --pca 0"),
        (["--calibrate", "mine", "--far", "1.5"], "--far must be in (0, 1), got 1.5"),
    ]
    for extra, message in cases:
        assert evaluate_main(["--model", model, "--benchmark", f"mine={pairs_csv}", "--out", str(tmp_path / "r"),
                              *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_a_broken_calibration_record_is_named(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read here")
    metadata_path(model).write_text(json.dumps({"calibration": {"threshold": "high"}}))

    class Loaded:
        path, metadata = model, json.loads(metadata_path(model).read_text())

    with pytest.raises(ConfigError, match=r"m.onnx metadata: 'calibration' lacks "):
        read_calibration(Loaded())
    metadata_path(model).write_text("{broken")
    record = Calibration("b", "p", 2, 1, "sum", 1.0, 0.0, 0.5, 1.0, 1e-3, 0.6, 0.0, 1.0)
    with pytest.raises(ConfigError, match="not valid JSON"):
        write_calibration(model, record)
    metadata_path(model).unlink()
    write_calibration(model, record)  # a model without metadata gets a file holding the record
    assert json.loads(metadata_path(model).read_text()) == {"calibration": record.to_json()}
