"""tfface.export and tools.export: the SavedModel holds the backbone's variables only, its signatures reproduce the
Keras backbone's embeddings (plain, pre-normalised and flip-summed), metadata, atomic writes and clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface import backbones
from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from tfface.errors import ConfigError
from tfface.embedders import METADATA_FILE, model_versions
from tfface.export import export_run, load_exported
from tfface.runs import build_backbone, read_run
from tfface.training.config import config_hash, load_config, save_config
from tools.export import main as export_main
from trainers.train import prepare, train

INPUT_SHAPE = (20, 16, 3)  # not square, so a height/width mix-up shows
EMBEDDING_SIZE = 8
NUM_CLASSES = 5


def write_tiny_run(run_dir: Path, seed: int = 0) -> Path:
    """A run dir by hand: a `tiny` backbone with random weights and batch-norm statistics (so inference-mode BN
    matters), its config.yaml and run.json, as trainers.train writes them."""
    run_dir.mkdir(parents=True)
    options = f"backbone.options={{embedding_size: {EMBEDDING_SIZE}, width: 4}}"
    config = load_config(None, ["backbone.name=tiny", options])
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=EMBEDDING_SIZE, width=4)
    rng = np.random.default_rng(seed)
    for variable in backbone.variables:
        values = rng.normal(0.0, 0.5, size=variable.shape)
        if "variance" in variable.path:
            values = rng.uniform(0.5, 2.0, size=variable.shape)
        variable.assign(values.astype("float32"))
    backbone.save_weights(str(run_dir / "backbone.weights.h5"))
    save_config(config, str(run_dir / "config.yaml"))
    run = {"backbone": "tiny", "input_shape": list(INPUT_SHAPE), "embedding_size": EMBEDDING_SIZE,
           "num_classes": NUM_CLASSES, "config_hash": config_hash(config)}
    (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir


def reference_backbone(run_dir: Path):
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=EMBEDDING_SIZE, width=4)
    backbone.load_weights(str(run_dir / "backbone.weights.h5"))
    return backbone


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def keras_embeddings(backbone, uint8_images: np.ndarray) -> np.ndarray:
    """The backbone's raw embeddings of uint8 images, normalised by hand in numpy."""
    normalized = ((uint8_images.astype(np.float64) - 127.5) / 128.0).astype(np.float32)
    return backbone(normalized, training=False)["embedding"].numpy().astype(np.float64)


def saved_variables(version_dir: Path):
    """Every variable tensor stored in a SavedModel's checkpoint, as numpy arrays."""
    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
    keys = [key for key in reader.get_variable_to_shape_map() if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return [reader.get_tensor(key) for key in keys]


def canonical(arrays):
    """A sortable, comparable form of a collection of arrays (order-free multiset)."""
    return sorted((tuple(array.shape), np.asarray(array, np.float32).tobytes()) for array in arrays)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    return export_run(run_dir, run_dir.parent / "models" / "tiny" / "1")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(5, *INPUT_SHAPE)).astype(np.uint8)


def test_embeddings_equal_the_keras_backbone_after_l2_normalisation(run_dir, exported, images):
    expected = unit_rows(keras_embeddings(reference_backbone(run_dir), images))
    model = load_exported(exported)
    served = model(images)
    assert served.shape == (5, EMBEDDING_SIZE) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, atol=1e-5)
    normalized = ((images.astype(np.float64) - 127.5) / 128.0).astype(np.float32)
    np.testing.assert_allclose(model.embed_normalized(normalized), expected, atol=1e-5)
    np.testing.assert_allclose(model(images, batch_size=2), expected, atol=1e-5)


def test_flip_signature_sums_image_and_mirror_embeddings(run_dir, exported, images):
    backbone = reference_backbone(run_dir)
    mirrored = images[:, :, ::-1, :].copy()
    expected = unit_rows(keras_embeddings(backbone, images) + keras_embeddings(backbone, mirrored))
    model = load_exported(exported)
    np.testing.assert_allclose(model(images, flip=True), expected, atol=1e-5)
    np.testing.assert_allclose(model(mirrored, flip=True), expected, atol=1e-5)
    assert np.abs(model(images) - expected).max() > 1e-3  # a mirror changes this backbone's embedding


def test_savedmodel_holds_exactly_the_backbone_variables(run_dir, exported):
    backbone_values = [variable.numpy() for variable in reference_backbone(run_dir).variables]
    assert canonical(saved_variables(exported)) == canonical(backbone_values)


def test_export_of_a_trained_run_leaves_head_and_optimizer_out(tmp_path):
    data_dir = tmp_path / "data"
    rng = np.random.default_rng(0)
    with ShardedTFRecordWriter(data_dir, prefix="train", examples_per_shard=50) as writer:
        for label in range(NUM_CLASSES):
            for _ in range(4):
                writer.write(make_example(rng.integers(0, 256, size=(20, 20, 3)).astype(np.uint8), label))
    config = load_config(None, [
        "backbone.name=tiny", f"backbone.options={{embedding_size: {EMBEDDING_SIZE}, width: 4}}",
        "head.name=softmax", f"data.train={data_dir}", "data.crop_size=[16, 16]", "data.shuffle_buffer=8",
        "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=8", "train.verbose=0",
        "schedule.name=constant", f"work_dir={tmp_path / 'run'}",
    ])
    prepared = prepare(config)
    train(config, prepared)
    trainer = prepared.trainer
    trainer_variable_count = len(trainer.variables) + len(trainer.optimizer.variables)
    assert trainer_variable_count > len(trainer.backbone.variables)

    version_dir = export_run(tmp_path / "run", tmp_path / "models" / "tiny" / "7")
    stored = saved_variables(version_dir)
    assert canonical(stored) == canonical([variable.numpy() for variable in trainer.backbone.variables])
    head_shapes = {tuple(weight.shape) for weight in trainer.head.get_weights()}
    assert (EMBEDDING_SIZE, NUM_CLASSES) in head_shapes
    assert not head_shapes & {array.shape for array in stored}


def test_saved_model_cli_lists_the_three_signatures(exported):
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run(
        [str(cli), "show", "--all", "--dir", str(exported)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for name, dtype in (("serving_default", "DT_UINT8"), ("embed_normalized", "DT_FLOAT"), ("embed_flip", "DT_UINT8")):
        block = shown.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
        assert "inputs['images']" in block and f"dtype: {dtype}" in block and "shape: (-1, 20, 16, 3)" in block
        assert "outputs['embedding']" in block and f"shape: (-1, {EMBEDDING_SIZE})" in block


def test_metadata_file_describes_the_run(run_dir, exported):
    metadata = json.loads((exported / METADATA_FILE).read_text())
    run = json.loads((run_dir / "run.json").read_text())
    assert metadata["backbone"] == "tiny"
    assert metadata["input_shape"] == list(INPUT_SHAPE) and metadata["embedding_size"] == EMBEDDING_SIZE
    assert metadata["config_hash"] == run["config_hash"]
    assert metadata["backbone_options"] == {"embedding_size": EMBEDDING_SIZE, "width": 4}
    assert set(metadata["signatures"]) == {"serving_default", "embed_normalized", "embed_flip"}
    model = load_exported(exported)
    assert model.input_shape == INPUT_SHAPE and model.embedding_size == EMBEDDING_SIZE


def test_export_refuses_an_existing_version_and_leaves_no_partial_folder(run_dir, exported, monkeypatch):
    with pytest.raises(ConfigError, match="already exists"):
        export_run(run_dir, exported)

    def failing_write_out(self, filepath, **kwargs):
        Path(filepath, "saved_model.pb").write_text("half written")
        raise OSError("disk full")

    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", failing_write_out)
    with pytest.raises(OSError, match="disk full"):
        export_run(run_dir, exported.parent / "2")
    assert sorted(path.name for path in exported.parent.iterdir()) == ["1"]


def test_load_exported_takes_the_newest_or_a_given_version(run_dir, exported, images):
    base = exported.parent
    newer = export_run(write_tiny_run(run_dir.parent / "run_b", seed=5), base / "12")
    (base / "3").mkdir()  # a version folder without saved_model.pb is not a version
    assert sorted(model_versions(base)) == [1, 12]
    assert load_exported(base).path == newer
    assert load_exported(base, version=1).path == exported
    assert not np.allclose(load_exported(base)(images), load_exported(exported)(images))
    with pytest.raises(FileNotFoundError, match="no version 4"):
        load_exported(base, version=4)


def test_load_exported_rejects_bad_input(exported, tmp_path):
    model = load_exported(exported)
    with pytest.raises(ValueError, match=r"images must have shape \[N, 20, 16, 3\]"):
        model(np.zeros((2, 16, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="images must be uint8"):
        model(np.zeros((2, *INPUT_SHAPE), np.float32))
    with pytest.raises(FileNotFoundError, match="no SavedModel .saved_model.pb. in"):
        load_exported(tmp_path)


def test_read_run_names_what_is_missing(run_dir, tmp_path):
    assert read_run(run_dir)["input_shape"] == list(INPUT_SHAPE)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.yaml", "backbone.weights.h5"):
        (broken / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(ConfigError, match="no run.json"):
        read_run(broken)
    (broken / "run.json").write_text(json.dumps({"backbone": "tiny", "input_shape": [20, 16, 3]}))
    with pytest.raises(ConfigError, match="missing field\\(s\\) embedding_size, config_hash"):
        read_run(broken)
    (broken / "run.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable run.json or config.yaml"):
        read_run(broken)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras' note on the failing load
def test_weights_that_do_not_fit_the_backbone_are_named(run_dir, tmp_path):
    mismatched = write_tiny_run(tmp_path / "mismatched")
    run = read_run(mismatched)
    run["backbone_options"] = {**run["backbone_options"], "width": 6}
    with pytest.raises(ConfigError, match="backbone.weights.h5: does not fit backbone 'tiny'"):
        build_backbone(run, mismatched / "backbone.weights.h5")


def test_cli_exports_and_reports_errors_in_one_line(run_dir, tmp_path, capsys):
    out = tmp_path / "models" / "tiny" / "4"
    assert export_main(["--work_dir", str(run_dir), "--out", str(out)]) == 0
    assert f"exported tiny (20x16 -> {EMBEDDING_SIZE}-d embedding" in capsys.readouterr().out
    assert (out / "saved_model.pb").is_file()
    for work_dir, target, message in (
        (run_dir, tmp_path / "models" / "tiny" / "latest", "error: --out must end in a numeric version folder"),
        (tmp_path / "nowhere", tmp_path / "models" / "tiny" / "5", "error: work dir not found"),
        (run_dir, out, "error: export target already exists"),
        (run_dir, out / "saved_model.pb" / "1", f"error: --out {out / 'saved_model.pb' / '1'}: "
                                                 f"{out / 'saved_model.pb'} is not a folder"),
    ):
        assert export_main(["--work_dir", str(work_dir), "--out", str(target)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), lines
