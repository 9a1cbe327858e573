"""tfface.deploy, tools.export --format tflite|onnx and tools.evaluate on the files: a tiny run's embedding path as
TFLite (float32, dynamic, float16) and ONNX, run by LiteRT and onnxruntime, against the Keras backbone with the
normalisation done in numpy; the parity check and its failure; one-line errors for malformed and non-embedding
model files."""
import json
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from PIL import Image

from tfface.deploy import ParityError, export_file, tflite_bytes
from tfface.embedders import OnnxEmbedder, TFLiteEmbedder, load_embedder, metadata_path
from tfface.errors import ConfigError
from tfface.evaluation import evaluate_pairs, read_pairs_csv
from tfface.export import export_backbone, export_run
from tools.evaluate import main as evaluate_main
from tools.export import main as export_main

from test_export import INPUT_SHAPE, keras_embeddings, reference_backbone, unit_rows, write_tiny_run

QUANTIZED_TOLERANCE = {"dynamic": 0.05, "float16": 0.01}  # max |diff| of unit embeddings allowed per mode


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("deploy") / "run")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(6, *INPUT_SHAPE)).astype(np.uint8)


@pytest.fixture(scope="module")
def pairs_csv(run_dir, images) -> Path:
    """A pairs CSV over the 6 test images saved as PNGs: 12 pairs in 2 folds."""
    folder = run_dir.parent / "faces"
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index}.png")
    rows = ["path1,path2,issame,fold"]
    for index in range(12):
        first, second = index % 6, (index * 5 + 1) % 6
        rows.append(f"{first}.png,{second}.png,{int(index % 2 == 0)},{index // 6}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """{(format, quantize): file} for every deployment file of the tiny run."""
    folder = tmp_path_factory.mktemp("files")
    files = {}
    for file_format, quantize in (("tflite", None), ("tflite", "dynamic"), ("tflite", "float16"), ("onnx", None)):
        path = folder / f"tiny-{quantize or 'float32'}.{file_format}"
        export_file(run_dir, path, file_format, quantize)
        files[file_format, quantize] = path
    return files


@pytest.mark.parametrize("key", [("tflite", None), ("tflite", "dynamic"), ("tflite", "float16"), ("onnx", None)])
def test_each_format_reproduces_the_keras_backbone(run_dir, exported, images, key):
    expected = unit_rows(keras_embeddings(reference_backbone(run_dir), images))
    embedder = load_embedder(exported[key])
    assert isinstance(embedder, TFLiteEmbedder if key[0] == "tflite" else OnnxEmbedder)
    assert embedder.input_size == INPUT_SHAPE[:2] and embedder.embedding_size == expected.shape[1]
    got = embedder(images)
    assert got.shape == expected.shape and got.dtype == np.float32
    tolerance = 1e-5 if key[1] is None else QUANTIZED_TOLERANCE[key[1]]
    np.testing.assert_allclose(got, expected, atol=tolerance)
    np.testing.assert_allclose(embedder(images, batch_size=4), got, atol=1e-6)  # batches of 4 and 2
    metadata = json.loads(metadata_path(exported[key]).read_text())
    assert (metadata["format"], metadata["quantize"]) == key
    assert metadata["size_bytes"] == exported[key].stat().st_size
    assert metadata["input_shape"] == list(INPUT_SHAPE) and metadata["backbone"] == "tiny"
    assert metadata["parity"]["images"] == 32 and metadata["parity"]["max_abs_diff"] <= tolerance
    assert embedder.metadata == metadata


@pytest.mark.parametrize("key", [("tflite", None), ("onnx", None)])
def test_flip_sums_image_and_mirror_embeddings(run_dir, exported, images, key):
    """TFLite runs the embed_flip signature (raw embeddings summed); ONNX has no flip graph, so the embedder sums
    the two unit embeddings."""
    backbone = reference_backbone(run_dir)
    plain, mirrored = keras_embeddings(backbone, images), keras_embeddings(backbone, images[:, :, ::-1].copy())
    if key[0] == "onnx":
        plain, mirrored = unit_rows(plain), unit_rows(mirrored)
    expected = unit_rows(plain + mirrored)
    np.testing.assert_allclose(load_embedder(exported[key])(images, flip=True), expected, atol=1e-5)


def test_quantization_shrinks_the_weights(tmp_path):
    """The tiny run's weights are below the converter's quantisation threshold, so a model with 131k dense weights:
    dynamic stores them as int8 (about 1/4 of float32), float16 as float16 (about 1/2)."""
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Dense(512)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {"embedding": keras.layers.Dense(64)(hidden)})
    saved_model = export_backbone(model, tmp_path / "dense" / "1", metadata={})
    sizes = {mode: len(tflite_bytes(saved_model, mode)) for mode in (None, "dynamic", "float16")}
    assert sizes[None] > 4 * (192 * 512 + 512 * 64)
    assert sizes["dynamic"] < 0.3 * sizes[None] and 0.45 * sizes[None] < sizes["float16"] < 0.55 * sizes[None]


def test_parity_pairs_report_both_accuracies(run_dir, pairs_csv, tmp_path):
    pairs = read_pairs_csv(pairs_csv)
    metadata = export_file(run_dir, tmp_path / "tiny.onnx", "onnx", parity_pairs=pairs)
    paths = [str(pairs_csv.parent / f"{index}.png") for index in range(6)]
    pixels = np.stack([np.asarray(Image.open(path)) for path in paths])
    embeddings = unit_rows(keras_embeddings(reference_backbone(run_dir), pixels))
    index = {path: number for number, path in enumerate(paths)}
    first = embeddings[[index[path] for path in pairs.paths1]]
    second = embeddings[[index[path] for path in pairs.paths2]]
    accuracy = evaluate_pairs(first, second, pairs.issame, folds=pairs.folds)["accuracy_mean"]
    checked = metadata["parity"]
    assert checked["images"] == 6 and checked["source"] == "12 pairs"
    assert checked["accuracy_savedmodel"] == pytest.approx(accuracy, abs=1e-9)
    assert checked["accuracy_exported"] == pytest.approx(accuracy, abs=1e-9)
    assert checked["accuracy_difference"] == pytest.approx(0.0, abs=1e-9)


def test_a_float32_file_off_by_more_than_1e4_is_not_written(run_dir, tmp_path, monkeypatch, capsys):
    """The converter is made to convert another run's weights: parity fails, nothing is written, exit code 1."""
    import tfface.deploy as deploy

    other = write_tiny_run(tmp_path / "other", seed=7)
    original = deploy.onnx_bytes

    def convert_the_other_run(saved_model_dir):
        return original(export_run(other, tmp_path / "other_model" / "1"))

    monkeypatch.setattr(deploy, "onnx_bytes", convert_the_other_run)
    with pytest.raises(ParityError, match=r"onnx file differs from the SavedModel by max \|diff\| .* > 1e-04"):
        export_file(run_dir, tmp_path / "a.onnx", "onnx")
    assert not (tmp_path / "a.onnx").exists() and not metadata_path(tmp_path / "a.onnx").exists()
    monkeypatch.setattr(deploy, "onnx_bytes", lambda saved_model_dir: original(tmp_path / "other_model" / "1"))
    assert export_main(["--work_dir", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "b.onnx")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: onnx file differs from the SavedModel"), lines
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_file()) == []


def test_cli_writes_the_file_and_says_its_parity(run_dir, pairs_csv, tmp_path, capsys):
    out = tmp_path / "models" / "tiny.tflite"
    assert export_main(["--work_dir", str(run_dir), "--format", "tflite", "--quantize", "float16", "--out", str(out),
                        "--parity_pairs", str(pairs_csv)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"exported tiny as tflite float16 (0.02 MB) to {out}; parity on 12 pairs: max |diff| ")
    assert "accuracy" in printed and out.is_file() and metadata_path(out).is_file()
    assert sorted(path.name for path in out.parent.iterdir()) == ["tiny.tflite", "tiny.tflite.json"]


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--quantize", "dynamic", "--out", "{tmp}/a.onnx"],
     "error: quantize is dynamic or float16 for tflite only, got 'dynamic' for onnx"),
    (["--format", "tflite", "--out", "{tmp}/a.onnx"], "error: format tflite writes a file ending in .tflite"),
    (["--quantize", "float16", "--out", "{tmp}/models/x/1"], "error: --quantize is for --format tflite or onnx"),
    (["--format", "onnx", "--out", "{tmp}/a.onnx", "--parity_pairs", "{tmp}/none.csv"],
     "error: pairs CSV not found: {tmp}/none.csv"),
    (["--format", "onnx", "--out", "{tmp}/exists.onnx"], "error: export target already exists: {tmp}/exists.onnx"),
])
def test_cli_errors_are_one_line(run_dir, tmp_path, capsys, argv, message):
    (tmp_path / "exists.onnx").write_bytes(b"")
    argv = [part.format(tmp=tmp_path) for part in argv]
    assert export_main(["--work_dir", str(run_dir), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(tmp=tmp_path)), lines


def float_input_tflite(path: Path) -> Path:
    """A TFLite model with a float32 image input: not the embedding contract."""
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def two_output_onnx(path: Path) -> Path:
    """An ONNX model with a uint8 image input and two outputs: not the embedding contract."""
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["a"], to=onnx.TensorProto.FLOAT),
         helper.make_node("Identity", ["a"], ["b"])],
        "two", [helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", 8, 8, 3]) for name in ("a", "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("case, message", [
    ("garbage_tflite", "--model {path}: not a TFLite model: "),
    ("garbage_onnx", "--model {path}: not an ONNX model: "),
    ("float_tflite", "--model {path}: input '"),
    ("two_output_onnx", "--model {path}: must take one input and return one output, it has inputs ['images'] and "
                        "outputs ['a', 'b']"),
    ("missing", "--model: not found: {path}"),
])
def test_malformed_or_non_embedding_files_are_one_error_line(tmp_path, pairs_csv, capsys, case, message):
    path = {
        "garbage_tflite": tmp_path / "junk.tflite",
        "garbage_onnx": tmp_path / "junk.onnx",
        "float_tflite": tmp_path / "float.tflite",
        "two_output_onnx": tmp_path / "two.onnx",
        "missing": tmp_path / "absent.onnx",
    }[case]
    if case.startswith("garbage"):
        path.write_bytes(b"this is not a model file\n" * 4)
    elif case == "float_tflite":
        float_input_tflite(path)
    elif case == "two_output_onnx":
        two_output_onnx(path)
    with pytest.raises((ConfigError, FileNotFoundError)) as raised:
        load_embedder(path, label="--model")
    assert str(raised.value).startswith(message.format(path=path)) and "\n" not in str(raised.value)
    if case == "float_tflite":
        assert "must be uint8 [N, H, W, 3] with H and W fixed, got float32" in str(raised.value)
    code = evaluate_main(["--model", str(path), "--benchmark", f"x={pairs_csv}", "--out", str(tmp_path / "report")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: " + message.format(path=path)), lines
    assert not (tmp_path / "report").exists()


def test_evaluate_gives_the_savedmodel_numbers_for_each_file(run_dir, exported, pairs_csv, tmp_path, capsys):
    """tools.evaluate --model FILE: the same report numbers as the run's SavedModel (float32 files)."""
    saved_model = export_run(run_dir, tmp_path / "models" / "tiny" / "1")
    reports = {}
    for name, model in (("savedmodel", saved_model), ("tflite", exported["tflite", None]),
                        ("onnx", exported["onnx", None])):
        code = evaluate_main(["--model", str(model), "--benchmark", f"faces={pairs_csv}", "--batch-size", "4",
                              "--out", str(tmp_path / name)])
        assert code == 0, capsys.readouterr().err
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    for name in ("tflite", "onnx"):
        assert reports[name]["model"]["format"] == name
        assert reports[name]["model"]["metadata"]["format"] == name
        for key in ("accuracy_mean", "auc", "eer"):
            assert reports[name]["benchmarks"]["faces"][key] == pytest.approx(
                reports["savedmodel"]["benchmarks"]["faces"][key], abs=1e-6), (name, key)


@pytest.mark.parametrize("key", [("tflite", None), ("onnx", None)])
@pytest.mark.parametrize("fault, message", [
    ("changed_bytes", "--model {path}: its bytes changed: sha256 {actual}, but {path}.json says {expected}"),
    ("side_file_not_json", "--model {path}: its metadata {path}.json is not JSON: "),
    ("side_file_not_an_object", "--model {path}: its metadata {path}.json is not a JSON object"),
    ("sha256_not_hex", "--model {path}: its metadata {path}.json has a malformed sha256: 12345"),
])
def test_a_model_file_whose_bytes_or_side_file_lie_is_one_line_naming_it(exported, pairs_csv, tmp_path, capsys,
                                                                         key, fault, message):
    """Issue 28 item 6: a .tflite / .onnx whose bytes were changed was evaluated silently although FILE.json holds
    their sha256; a malformed FILE.json was a traceback."""
    import hashlib
    import shutil

    path = tmp_path / exported[key].name
    shutil.copy(exported[key], path)
    shutil.copy(metadata_path(exported[key]), metadata_path(path))
    expected = json.loads(metadata_path(path).read_text())["sha256"]
    if fault == "changed_bytes":
        path.write_bytes(path.read_bytes() + b"\0" * 16)  # trailing bytes: still a loadable model
    elif fault == "side_file_not_json":
        metadata_path(path).write_text('{"sha256": ')
    elif fault == "side_file_not_an_object":
        metadata_path(path).write_text("[1, 2]")
    else:
        metadata_path(path).write_text('{"sha256": 12345}')
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    code = evaluate_main(["--model", str(path), "--benchmark", f"x={pairs_csv}", "--out", str(tmp_path / "report")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    wanted = "error: " + message.format(path=path, actual=actual, expected=expected)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(wanted), lines
