"""Issue 12: every method in one run (experiments/ablation/configs/all_methods.yaml) and the `enabled` switch of plug-in entries."""
import numpy as np
import pytest
import tensorflow as tf

from tfface.data import synth
from tfface.errors import ConfigError
from tfface.export import export_run
from tfface.builder import build_trainer
from tfface.training.config import load_config
from experiments.aprn import mean_landmarks
from trainers.train import prepare, train

CONFIG = "experiments/ablation/configs/all_methods.yaml"
ALL_PLUGINS = {"aprn", "frontal_decoder", "bypass3d", "exclusive", "center_invariant"}
SIZE = 16


def shrunk(data_dir, work_dir, teacher_dir, extra=()):
    """all_methods.yaml at 16x16 with a tiny backbone, 1 step of 4 images, the test's data and teacher."""
    return load_config(CONFIG, [
        f"data.train={data_dir}", f"work_dir={work_dir}", "data.shuffle_buffer=16",
        "backbone.options={embedding_size: 8, width: 4}", "train.epochs=1", "train.steps_per_epoch=1",
        "train.batch_size=4", "train.checkpoint_every_epoch=false",
        f"branches.aprn.options.mean_landmarks={data_dir}/mean_landmarks.json",
        f"branches.frontal_decoder.options.image_size=[{SIZE}, {SIZE}]",
        "branches.frontal_decoder.options.ssim_filter_size=3",
        "branches.frontal_decoder.options.channels=[8, 4]",
        f"branches.bypass3d.options.map_size={SIZE}", "branches.bypass3d.options.march_steps=2",
        "branches.bypass3d.options.refine_steps=1", "branches.bypass3d.options.ira_width=4",
        "branches.bypass3d.options.code_size=8", "branches.bypass3d.options.iia_width=4",
        f"gate.options.teacher={teacher_dir}", *extra,
    ])


def plugins_off():
    return [f"{kind}.{name}.enabled=false" for kind, name in (
        ("branches", "aprn"), ("branches", "frontal_decoder"), ("branches", "bypass3d"),
        ("regularizers", "exclusive"), ("regularizers", "center_invariant"))] + ["gate.enabled=false"]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("all_methods_data")
    synth.generate(out, identities=4, images_per_identity=4, seed=5, test_identities=3, test_images_per_identity=2,
                   label_noise=0.25, options=synth.SynthOptions(image_size=SIZE), folds=2, pairs_per_fold=2,
                   batch_size=16, progress=False)
    assert mean_landmarks.main(["--data", str(out), "--out", str(out / "mean_landmarks.json")]) == 0
    return out


@pytest.fixture(scope="module")
def teacher(synth_data, tmp_path_factory):
    """The baseline (no plug-in) trained 1 step: the LATSE teacher, and the export the combined run must match."""
    work_dir = tmp_path_factory.mktemp("teacher") / "run"
    config = shrunk(synth_data, work_dir, "unused", plugins_off())
    train(config)
    return work_dir


def test_enabled_false_leaves_each_part_out(synth_data, teacher):
    config = shrunk(synth_data, "unused", teacher, ["branches.bypass3d.enabled=false", "regularizers.1.enabled=false",
                                                    "gate.enabled=false"])
    trainer = build_trainer(config, num_classes=4, steps_per_epoch=1, input_shape=(SIZE, SIZE, 3))
    assert {plugin.name for plugin in trainer.plugins} == {"aprn", "frontal_decoder", "exclusive"}
    assert trainer.gate is None


def test_override_by_name_and_index():
    config = load_config(CONFIG, ["branches.aprn.weight=0.5", "branches.2.enabled=false", "gate.options.k=3"])
    by_name = {entry["name"]: entry for entry in config["branches"]}
    assert by_name["aprn"]["weight"] == 0.5
    assert by_name["bypass3d"]["enabled"] is False
    assert by_name["frontal_decoder"].get("enabled", True) is True
    assert config["gate"]["options"] == {"teacher": "runs/all_methods_teacher", "k": 3}


@pytest.mark.parametrize("override, message", [
    ("branches.center.enabled=false", "no entry named 'center' in branches"),
    ("regularizers.7.enabled=false", "regularizers has 2 entries"),
])
def test_bad_entry_address_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [override])


def test_enabled_must_be_a_boolean(synth_data, teacher):
    config = shrunk(synth_data, "unused", teacher, ["regularizers.exclusive.enabled=no thanks"])
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.enabled must be true or false"):
        build_trainer(config, 4, 1, (SIZE, SIZE, 3))


def _exported_variables(export_dir):
    """(name, shape) of every variable the signatures read, and the shapes of every variable the SavedModel stores."""
    loaded = tf.saved_model.load(str(export_dir))
    read = {(variable.name, tuple(variable.shape)) for signature in loaded.signatures.values()
            for variable in signature.variables}
    stored = [tuple(shape) for name, shape in tf.train.list_variables(str(export_dir / "variables" / "variables"))
              if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return sorted(read), sorted(stored)


def test_combined_run_trains_finite_and_exports_the_baseline_variables(synth_data, teacher, tmp_path):
    # one replica: each plug-in's mirrored step is checked against one device in its own tests (tracing every
    # plug-in for two replicas took this test from 22 to 61 s)
    config = shrunk(synth_data, tmp_path / "all", teacher, ["train.strategy=default"])
    prepared = prepare(config)
    assert {plugin.name for plugin in prepared.trainer.plugins} == ALL_PLUGINS
    assert prepared.trainer.gate.name == "teacher_topk"
    history = train(config, prepared).history
    for name in ("loss", "aprn_loss", "frontal_decoder_loss", "bypass3d_loss", "exclusive_loss",
                 "center_invariant_loss", "kept_fraction"):
        assert name in history, f"{name} not logged: {sorted(history)}"
        assert np.all(np.isfinite(history[name])), (name, history[name])
    combined = _exported_variables(export_run(tmp_path / "all", tmp_path / "export_all" / "1"))
    baseline = _exported_variables(export_run(teacher, tmp_path / "export_baseline" / "1"))
    assert combined == baseline
    backbone = sorted((f"{variable.path}:0", tuple(variable.shape)) for variable in prepared.trainer.backbone.variables)
    assert combined[0] == backbone
    assert combined[1] == sorted(shape for _, shape in backbone)


def test_combined_run_trains_on_another_head_switched_from_the_command_line(synth_data, teacher, tmp_path):
    """SphereFace (multiplicative angular margin, ArcFace's options cleared): one step, every loss finite."""
    head = ["head.name=sphereface", "head.options={}", "head.options.margin=4", "train.strategy=default"]
    config = shrunk(synth_data, tmp_path / "run", teacher, head)
    assert config["head"].to_dict() == {"name": "sphereface", "options": {"margin": 4}}
    history = train(config).history
    assert {"aprn_loss", "frontal_decoder_loss", "bypass3d_loss", "exclusive_loss", "center_invariant_loss"} <= set(
        history)
    for name, values in history.items():
        assert np.all(np.isfinite(values)), (head, name, values)


def test_a_head_switched_without_its_options_is_named(synth_data, teacher):
    config = shrunk(synth_data, "unused", teacher, ["head.name=softmax"])
    with pytest.raises(ConfigError, match=r"head 'softmax' with head.options .*scale.*--set head.options=\{\} clears"):
        build_trainer(config, 4, 1, (SIZE, SIZE, 3))
