"""LATSE: the frozen-teacher top-k gate, its zero gradient for gated-out examples, MirroredStrategy equivalence of a
gated step with the frontal decoder, export without decoder/teacher/bank, the tools and the configs."""
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from tfface import backbones, heads
from tfface.branches.frontal_decoder import FrontalDecoder
from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from tfface.errors import ConfigError
from tfface.export import export_run
from tfface.training import FaceTrainer
from tfface.training.config import load_config
from tfface.gates import GATES
from tfface.training.strategy import mirrored_strategy
from tfface.gates import TeacherTopKGate, gate_statistics
from experiments.latse import decoder_grid, gate_stats
from trainers.train import main as train_main, prepare

REPO = Path(__file__).resolve().parents[1]
INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 4
EMBEDDING_SIZE = 6
TEACHER_SCALE = 16.0
BACKBONE_OPTIONS = {"embedding_size": EMBEDDING_SIZE, "width": 8}


# ---------------------------------------------------------------------------------------------- fixtures and helpers
def write_teacher_run(directory: Path, seed: int = 7) -> Path:
    """A teacher work dir as trainers.train leaves it (tiny backbone + LinearFace head, random weights)."""
    directory.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, **BACKBONE_OPTIONS)
    head = heads.get_head("linearface", NUM_CLASSES, scale=TEACHER_SCALE)
    head.build((None, EMBEDDING_SIZE))
    backbone.save_weights(str(directory / "backbone.weights.h5"))
    np.savez(directory / "head.weights.npz", *head.get_weights())
    run = {"backbone": "tiny", "input_shape": list(INPUT_SHAPE), "embedding_size": EMBEDDING_SIZE,
           "num_classes": NUM_CLASSES, "config_hash": "test"}
    (directory / "run.json").write_text(json.dumps(run))
    config = {"backbone": {"name": "tiny", "options": BACKBONE_OPTIONS},
              "head": {"name": "linearface", "options": {"scale": TEACHER_SCALE}}, "data": {}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return write_teacher_run(tmp_path_factory.mktemp("latse") / "teacher")


def numpy_teacher_logits(teacher_dir: Path, images: np.ndarray) -> np.ndarray:
    """The teacher's plain LinearFace logits s cos theta_j, from its weight files, the cosine in numpy."""
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, **BACKBONE_OPTIONS)
    backbone.load_weights(str(teacher_dir / "backbone.weights.h5"))
    embeddings = backbone(images, training=False)["embedding"].numpy().astype(np.float64)
    with np.load(teacher_dir / "head.weights.npz") as archive:
        kernel = archive["arr_0"].astype(np.float64)
    unit_embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit_kernel = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    return TEACHER_SCALE * unit_embeddings @ unit_kernel


def numpy_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (logits > logits[np.arange(len(labels)), labels][:, None]).sum(axis=1)


def make_images(size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(size, *INPUT_SHAPE)).astype(np.float32)


def make_student(
    teacher_dir, k: int = 1, sync_batchnorm: bool = False, with_gate: bool = True, scope: str = "backbone"
) -> FaceTrainer:
    """tiny + LinearFace + frontal decoder (+ teacher gate of `scope`), plain SGD; call inside the strategy scope."""
    backbone = backbones.get_backbone(
        "tiny", input_shape=INPUT_SHAPE, sync_batchnorm=sync_batchnorm, **BACKBONE_OPTIONS
    )
    decoder = FrontalDecoder(
        image_size=INPUT_SHAPE[:2], channels=(8, 4), blocks_per_stage=1, ssim_filter_size=7, momentum=0.5,
        sync_batchnorm=sync_batchnorm,
    )
    gate = TeacherTopKGate(str(teacher_dir), k=k, scope=scope) if with_gate else None
    trainer = FaceTrainer(
        backbone, heads.get_head("linearface", NUM_CLASSES, scale=TEACHER_SCALE), branches=[decoder], gate=gate
    )
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    trainer.build_all(INPUT_SHAPE)
    return trainer


def fill_bank(trainer: FaceTrainer, seed: int = 3) -> None:
    """Every class has a (random) mean image, so the decoder's GLoss counts from the first step."""
    decoder = trainer.branches[0]
    decoder.bank.assign(np.random.default_rng(seed).uniform(-1, 1, size=decoder.bank.shape).astype(np.float32))
    decoder.seen.assign(np.ones(NUM_CLASSES, np.float32))


def step(trainer: FaceTrainer, images, labels):
    return trainer.train_on_batch({"image": images, "label": labels}, return_dict=True)


# ---------------------------------------------------------------------------------------------- the gate
@pytest.mark.parametrize("k", [1, 3])
def test_gate_keeps_an_example_when_its_label_is_in_the_teachers_top_k(teacher_dir, k):
    images = make_images(16)
    labels = np.arange(16, dtype=np.int32) % NUM_CLASSES
    expected_ranks = numpy_ranks(numpy_teacher_logits(teacher_dir, images), labels)
    gate = GATES.build("teacher_topk", teacher=str(teacher_dir), k=k)
    gate.build_for({}, heads.get_head("softmax", NUM_CLASSES))
    np.testing.assert_array_equal(gate.label_ranks(images, labels).numpy(), expected_ranks)
    np.testing.assert_array_equal(gate.teacher_logits(images).numpy().argmax(axis=1),
                                  numpy_teacher_logits(teacher_dir, images).argmax(axis=1))
    assert 0 < (expected_ranks < k).sum() < 16  # the batch has kept and dropped examples
    reference = tf.math.in_top_k(tf.constant(labels), gate.teacher_logits(images), k).numpy()
    np.testing.assert_array_equal(expected_ranks < k, reference)


def test_teacher_is_frozen_outside_the_student_and_logs_the_kept_fraction(teacher_dir):
    trainer = make_student(teacher_dir, k=1)
    gate = trainer.gate
    assert gate.trainable_variables == [] and len(gate.non_trainable_variables) > 0
    teacher_ids = {id(variable) for variable in gate.weights}
    assert not teacher_ids & {id(variable) for variable in trainer.trainable_variables}
    assert not teacher_ids & {id(variable) for variable in trainer._main_variables()}
    teacher_before = [variable.numpy().copy() for variable in gate.weights]

    images = make_images()
    labels = np.arange(8, dtype=np.int32) % NUM_CLASSES
    logs = step(trainer, images, labels)
    kept = numpy_ranks(numpy_teacher_logits(teacher_dir, images), labels) < 1
    np.testing.assert_allclose(logs["kept_fraction"], kept.mean(), rtol=1e-6)
    for variable, before in zip(gate.weights, teacher_before):
        np.testing.assert_array_equal(variable.numpy(), before)


def student_parts(trainer: FaceTrainer):
    """(backbone trainable, head, decoder trainable) weights as numpy arrays."""
    return tuple(
        [variable.numpy() for variable in variables]
        for variables in (
            trainer.backbone.trainable_variables, trainer.head.weights, trainer.branches[0].decoder.trainable_variables
        )
    )


@pytest.mark.parametrize("scope", ["backbone", "losses"])
def test_gated_out_example_sends_no_gradient_into_the_backbone(teacher_dir, scope):
    """Algorithm 1 (paper 001): "if y_i in topk(prob_yteacher, k) then gradForEm = filter(gradFromLoss) end if;
    studentNet.backward(gradForEm)", while "gradDLoss = FCLMSoftmax.backward(DLoss)" and
    "gradGLoss = genNet.backward(GLoss)" run for every example.

    Example 0's label is outside the teacher's top-1; changing it to another such label changes its identity loss
    (both labels' bank images are equal, so its decoder target stays: the decoder's batch norm would carry a GLoss
    change to the other examples' embeddings, a gradient Algorithm 1 passes). Scope "backbone" (the paper's): the
    backbone's update stays bit for bit the same and the head's W moves. Scope "losses": the whole student's update
    stays the same. With k = C (nothing gated) the change moves the backbone too."""
    images = make_images()
    teacher_top1 = numpy_teacher_logits(teacher_dir, images).argmax(axis=1)
    labels = teacher_top1.astype(np.int32)
    outside = [label for label in range(NUM_CLASSES) if label != teacher_top1[0]]
    first, second = labels.copy(), labels.copy()
    first[0], second[0] = outside[0], outside[1]

    def updates(k):
        """The student's weights after one step from the same start with each labelling."""
        trainer = make_student(teacher_dir, k=k, scope=scope)
        fill_bank(trainer)
        bank = trainer.branches[0].bank
        bank.assign(tf.tensor_scatter_nd_update(bank, [[outside[1]]], bank[outside[0]][None]))
        initial = trainer.get_weights()  # SGD without momentum: the weights are the whole training state
        results = []
        for labels_of_step in (first, second):
            trainer.set_weights(initial)
            logs = step(trainer, images, labels_of_step)
            results.append(student_parts(trainer))
        return results, logs

    def largest_change(mine, theirs):
        return max(np.abs(a - b).max() for a, b in zip(mine, theirs))

    (gated_first, gated_second), logs = updates(k=1)
    np.testing.assert_allclose(logs["kept_fraction"], 7 / 8)
    assert logs["frontal_decoder_loss"] > 0
    for mine, theirs in zip(gated_first[0], gated_second[0]):
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(gated_first[2], gated_second[2]):  # the decoder: same targets, same update
        np.testing.assert_array_equal(mine, theirs)
    if scope == "backbone":
        assert largest_change(gated_first[1], gated_second[1]) > 1e-4
    else:
        for mine, theirs in zip(gated_first[1], gated_second[1]):
            np.testing.assert_array_equal(mine, theirs)

    (open_first, open_second), _ = updates(k=NUM_CLASSES)
    assert largest_change(open_first[0], open_second[0]) > 1e-4


def numpy_linearface_loss(embeddings, kernel, labels, scale=TEACHER_SCALE, a=0.88, b=0.88):
    """Mean cross entropy of LinearFace (paper 001, Eq. 10: target s(-a theta_y + b), others s cos theta_j), float64."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = unit @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True))
    rows = np.arange(len(labels))
    logits = scale * cosine
    logits[rows, labels] = scale * (-a * np.arccos(np.clip(cosine[rows, labels], -1 + 1e-7, 1 - 1e-7)) + b)
    logits -= logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[rows, labels]))


def test_all_gated_out_batch_trains_w_and_the_decoder_and_leaves_the_backbone(teacher_dir):
    """Algorithm 1 (paper 001): "gradDLoss = FCLMSoftmax.backward(DLoss)" and "gradGLoss = genNet.backward(GLoss)"
    for every example; only "gradForEm = filter(gradFromLoss)", the gradient into the student network, passes the
    top-k test.

    Every label of the batch is outside the teacher's top-1: the backbone's trainable weights stay bit for bit the
    same, W takes the plain SGD step of the ungated DLoss (its gradient by central differences of a float64 numpy
    LinearFace loss), and the decoder takes the same step as a student without a gate."""
    images = make_images()
    labels = ((numpy_teacher_logits(teacher_dir, images).argmax(axis=1) + 1) % NUM_CLASSES).astype(np.int32)
    gated = make_student(teacher_dir, k=1)
    fill_bank(gated)
    parts = (gated.backbone, gated.head, gated.branches[0])
    initial = [part.get_weights() for part in parts]
    embeddings = gated.backbone(images, training=True)["embedding"].numpy().astype(np.float64)
    gated.backbone.set_weights(initial[0])  # undo the moving batch-norm statistics of that call
    kernel = gated.head.kernel.numpy().astype(np.float64)
    backbone_before, _, decoder_before = student_parts(gated)
    logs = step(gated, images, labels)
    assert logs["kept_fraction"] == 0.0 and logs["frontal_decoder_loss"] > 0

    backbone_after, (kernel_after,), decoder_after = student_parts(gated)
    for before, after in zip(backbone_before, backbone_after):
        np.testing.assert_array_equal(before, after)
    gradient = np.zeros_like(kernel)
    delta = 1e-6
    for index in np.ndindex(kernel.shape):
        shifted = [kernel.copy(), kernel.copy()]
        shifted[0][index] += delta
        shifted[1][index] -= delta
        gradient[index] = (
            numpy_linearface_loss(embeddings, shifted[0], labels) - numpy_linearface_loss(embeddings, shifted[1], labels)
        ) / (2 * delta)
    np.testing.assert_allclose(kernel_after, kernel - 0.1 * gradient, atol=2e-5)
    assert np.abs(kernel_after - kernel).max() > 1e-3

    ungated = make_student(teacher_dir, with_gate=False)
    for part, weights in zip((ungated.backbone, ungated.head, ungated.branches[0]), initial):
        part.set_weights(weights)
    step(ungated, images, labels)
    for before, mine, theirs in zip(decoder_before, decoder_after, student_parts(ungated)[2]):
        assert not np.array_equal(before, mine)
        np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_mirrored_gated_step_with_decoder_equals_single_device_step(teacher_dir):
    """Two replicas on a global batch of 8 (sync batch norm in backbone and decoder) give the weights, the bank and
    the kept fraction of one device on the same 8."""
    images = make_images()
    labels = np.array([0, 1, 2, 3, 3, 2, 1, 1], np.int32)
    single = make_student(teacher_dir, k=2, sync_batchnorm=True)
    fill_bank(single)
    single.branches[0].seen.assign([1.0, 0.0, 1.0, 1.0])  # class 1: first sighting, the bank takes the batch mean
    initial = single.get_weights()
    decoder_before = [variable.numpy().copy() for variable in single.branches[0].decoder.trainable_variables]
    single_logs = step(single, images, labels)

    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = make_student(teacher_dir, k=2, sync_batchnorm=True)
        mirrored.set_weights(initial)
    dataset = tf.data.Dataset.from_tensors({"image": images, "label": labels})
    history = mirrored.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    assert 0 < single_logs["kept_fraction"] < 1
    np.testing.assert_allclose(history.history["kept_fraction"][0], single_logs["kept_fraction"], atol=1e-6)
    for mine, theirs in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    for replica_bank in strategy.experimental_local_results(mirrored.branches[0].bank.value):
        np.testing.assert_allclose(replica_bank.numpy(), single.branches[0].bank.numpy(), atol=1e-6)
    decoder_after = single.branches[0].decoder.trainable_variables
    assert all(not np.allclose(before, after.numpy()) for before, after in zip(decoder_before, decoder_after))


def test_gate_reports_bad_input_by_name(teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match="work dir not found"):
        TeacherTopKGate(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="gate.options.k must be a positive integer"):
        TeacherTopKGate(str(teacher_dir), k=0)
    gate = TeacherTopKGate(str(teacher_dir), k=NUM_CLASSES + 1)
    with pytest.raises(ConfigError, match="k = 5 exceeds the teacher's 4 classes"):
        gate.build_for({}, heads.get_head("softmax", NUM_CLASSES))
    with pytest.raises(ConfigError, match="has 4 classes, the student's head 3"):
        TeacherTopKGate(str(teacher_dir)).build_for({}, heads.get_head("softmax", 3))
    gate = TeacherTopKGate(str(teacher_dir))
    gate.build_for({}, heads.get_head("softmax", NUM_CLASSES))
    with pytest.raises(ValueError, match=r"takes images of shape \(16, 16, 3\), the batch has \(20, 20, 3\)"):
        gate.label_ranks(np.zeros((2, 20, 20, 3), np.float32), np.zeros(2, np.int32))
    headless = tmp_path / "headless"
    write_teacher_run(headless)
    (headless / "head.weights.npz").unlink()
    with pytest.raises(ConfigError, match="has no head.weights.npz"):
        TeacherTopKGate(str(headless))


def test_gate_statistics_count_clean_kept_and_noisy_dropped():
    ranks = np.array([0, 0, 2, 5, 0, 1, 3, 0])
    labels = np.array([1, 2, 3, 0, 1, 2, 3, 0])
    true_labels = np.array([1, 2, 3, 0, 0, 0, 0, 0])  # four clean, then four noisy (index 7 clean: 0 == 0)
    statistics = gate_statistics(ranks, labels, true_labels, ks=(1, 3))
    # clean: ranks 0, 0, 2, 5, 0 (indices 0-3, 7); noisy: ranks 0, 1, 3 (indices 4-6)
    assert statistics[1] == {"kept": 4 / 8, "clean_kept": 3 / 5, "noisy_dropped": 2 / 3, "clean": 5, "noisy": 3}
    assert statistics[3] == {"kept": 6 / 8, "clean_kept": 4 / 5, "noisy_dropped": 1 / 3, "clean": 5, "noisy": 3}
    with pytest.raises(ValueError, match="one length"):
        gate_statistics(ranks, labels[:3], true_labels)


# ---------------------------------------------------------------------------------------------- end to end
def noisy_faces():
    """4 identities x 12 images of 20x20 (a bright square at the identity's place on noise): uint8 images [48, 20, 20,
    3], labels, true labels. 2 of every 12 images carry the next identity's label."""
    rng = np.random.default_rng(0)
    images, labels, true_labels = [], [], []
    for identity in range(NUM_CLASSES):
        for index in range(12):
            image = rng.integers(0, 60, size=(20, 20, 3)).astype(np.uint8)
            row, col = divmod(identity, 2)
            image[2 + 9 * row : 8 + 9 * row, 2 + 9 * col : 8 + 9 * col] = 230
            images.append(image)
            labels.append((identity + 1) % NUM_CLASSES if index < 2 else identity)
            true_labels.append(identity)
    return np.stack(images), np.array(labels), np.array(true_labels)


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory) -> Path:
    """`noisy_faces` as PNG TFRecords with true_label."""
    out = tmp_path_factory.mktemp("noisy_data")
    with ShardedTFRecordWriter(out, prefix="train", examples_per_shard=20) as writer:
        for image, label, true_label in zip(*noisy_faces()):
            writer.write(make_example(image, int(label), true_label=int(true_label)))
    return out


def train_run(tmp_path: Path, data_dir: Path, name: str, *overrides: str) -> Path:
    work_dir = tmp_path / name
    settings = [
        "backbone.name=tiny", f"backbone.options={json.dumps(BACKBONE_OPTIONS)}",
        "head.name=linearface", f"head.options={{scale: {TEACHER_SCALE}}}", f"data.train={data_dir}",
        "data.crop_size=[16, 16]", "data.shuffle_buffer=64", "train.epochs=2", "train.batch_size=8",
        "train.verbose=0", "schedule.name=constant", "schedule.learning_rate=0.05", f"work_dir={work_dir}",
        *overrides,
    ]
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(f"name: {name}\n")
    assert train_main(["--config", str(config_path), *[item for s in settings for item in ("--set", s)]]) == 0
    return work_dir


@pytest.fixture(scope="module")
def latse_runs(tmp_path_factory, noisy_data):
    """A teacher trained on the noisy set and a LinearFace+TS+Gen student trained with it, by trainers.train."""
    root = tmp_path_factory.mktemp("latse_runs")
    teacher = train_run(root, noisy_data, "teacher")
    decoder = {"name": "frontal_decoder", "options": {"image_size": [16, 16], "channels": [8, 4],
                                                     "blocks_per_stage": 1, "ssim_filter_size": 7}}
    student = train_run(
        root, noisy_data, "student", f"gate={{name: teacher_topk, options: {{teacher: {teacher}, k: 1}}}}",
        f"branches=[{json.dumps(decoder)}]", "train.epochs=1", "train.strategy=default",
    )
    return teacher, student


def saved_variables(version_dir: Path):
    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
    keys = [key for key in reader.get_variable_to_shape_map() if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return [reader.get_tensor(key) for key in keys]


def canonical(arrays):
    return sorted((tuple(array.shape), np.asarray(array, np.float32).tobytes()) for array in arrays)


def test_export_holds_the_student_backbone_and_no_decoder_teacher_or_bank(latse_runs, tmp_path):
    teacher_dir, student_dir = latse_runs
    history = (student_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert "kept_fraction" in history and "frontal_decoder_loss" in history
    version = export_run(student_dir, tmp_path / "models" / "student" / "1")
    stored = saved_variables(version)
    student = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, **BACKBONE_OPTIONS)
    student.load_weights(str(student_dir / "backbone.weights.h5"))
    assert canonical(stored) == canonical([variable.numpy() for variable in student.variables])
    teacher = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, **BACKBONE_OPTIONS)
    teacher.load_weights(str(teacher_dir / "backbone.weights.h5"))
    teacher_values = {np.asarray(v, np.float32).tobytes() for v in teacher.get_weights() if np.size(v) > 4}
    assert not teacher_values & {np.asarray(v, np.float32).tobytes() for v in stored}
    trainer, decoder, _ = decoder_grid.load_decoder_run(student_dir)
    assert decoder.seen.numpy().sum() == NUM_CLASSES  # the trained bank holds an image of every class
    decoder_values = {np.asarray(v, np.float32).tobytes() for v in decoder.get_weights() if np.size(v) > 4}
    assert not decoder_values & {np.asarray(v, np.float32).tobytes() for v in stored}
    assert (NUM_CLASSES, 16, 16, 3) not in {array.shape for array in stored}
    assert len(stored) == len(student.variables) < len(trainer.variables)


def assert_written_atomically(out: Path, run_tool) -> None:
    """`out` is written through a temporary file and a rename: when the rename fails, the previous `out` is intact
    and no temporary file is left beside it."""
    import tfface.data.image_io as image_io

    before = out.read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        def failing_replace(source, target):
            raise OSError("disk full (simulated)")

        patch.setattr(image_io.os, "replace", failing_replace)
        with pytest.raises(OSError, match="simulated"):
            run_tool()
    assert out.read_bytes() == before
    assert sorted(path.name for path in out.parent.iterdir() if path.name.startswith(f".{out.name}")) == []


def test_gate_stats_tool_reports_clean_and_noisy_fractions(latse_runs, noisy_data, tmp_path, capsys):
    teacher_dir, _ = latse_runs
    out = tmp_path / "gate.json"
    assert gate_stats.main(["--teacher", str(teacher_dir), "--data", str(noisy_data), "--k", "1", "2",
                            "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["examples"] == 48 and set(report["k"]) == {"1", "2"}
    assert report["k"]["1"]["clean"] == 40 and report["k"]["1"]["noisy"] == 8
    assert report["k"]["2"]["kept"] >= report["k"]["1"]["kept"]
    # the same numbers from the gate's ranks of the centre crops (16 of 20) and gate_statistics
    gate = TeacherTopKGate(str(teacher_dir), k=2)
    gate.build_teacher()
    images, labels, true_labels = noisy_faces()
    crops = (images[:, 2:18, 2:18].astype(np.float32) - 127.5) / 128.0
    ranks = gate.label_ranks(crops, labels.astype(np.int32)).numpy()
    expected = gate_statistics(ranks, labels, true_labels, ks=(1, 2))
    assert report["k"]["1"] == pytest.approx(expected[1]) and report["k"]["2"] == pytest.approx(expected[2])
    assert gate_stats.main(["--teacher", str(teacher_dir), "--data", str(tmp_path)]) == 2
    assert_written_atomically(out, lambda: gate_stats.main(["--teacher", str(teacher_dir), "--data", str(noisy_data),
                                                            "--k", "1", "--out", str(out)]))


def test_decoder_grid_shows_input_generated_and_difference(latse_runs, noisy_data, tmp_path):
    _, student_dir = latse_runs
    out = tmp_path / "grid.png"
    assert decoder_grid.main(["--work_dir", str(student_dir), "--data", str(noisy_data), "--count", "3",
                              "--scale", "2", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    pad, cell = decoder_grid.PADDING, 32
    assert grid.shape == (3 * (cell + pad) + pad, 3 * (cell + pad) + pad, 3)

    def cell_at(row, column):
        top, left = pad + row * (cell + pad), pad + column * (cell + pad)
        return grid[top : top + cell : 2, left : left + cell : 2].astype(np.int16)

    for column in range(3):
        np.testing.assert_array_equal(cell_at(2, column), np.abs(cell_at(0, column) - cell_at(1, column)))
    assert (cell_at(0, 0)[0:6, 0:6] >= 200).all()  # identity 0's bright square, centre-cropped from 20x20
    assert decoder_grid.main(["--work_dir", str(student_dir.parent / "teacher"), "--data", str(noisy_data),
                              "--out", str(out)]) == 2
    assert_written_atomically(out, lambda: decoder_grid.main(["--work_dir", str(student_dir), "--data",
                                                              str(noisy_data), "--count", "2", "--out", str(out)]))


def test_grid_image_layout():
    inputs = np.full((2, 3, 4, 3), 200, np.uint8)
    generated = np.full((2, 3, 4, 3), 50, np.uint8)
    grid = decoder_grid.grid_image(inputs, generated, scale=1)
    pad = decoder_grid.PADDING
    assert grid.shape == (3 * (3 + pad) + pad, 2 * (4 + pad) + pad, 3)
    assert (grid[pad : pad + 3, pad : pad + 4] == 200).all()
    assert (grid[2 * pad + 3 : 2 * pad + 6, pad : pad + 4] == 50).all()
    assert (grid[3 * pad + 6 : 3 * pad + 9, pad : pad + 4] == 150).all()
    assert (grid[:pad] == 255).all()


# ---------------------------------------------------------------------------------------------- configs
CONFIGS = sorted(path.name for path in (REPO / "experiments" / "latse" / "configs").glob("latse_*.yaml"))


def test_the_ablation_has_its_four_configs_and_a_teacher():
    for name in ("latse_teacher.yaml", "latse_linearface.yaml", "latse_linearface_ts.yaml",
                 "latse_linearface_gen.yaml", "latse_linearface_ts_gen.yaml"):
        assert name in CONFIGS
    configs = {name: load_config(str(REPO / "experiments" / "latse" / "configs" / name)) for name in CONFIGS}
    for name, config in configs.items():
        assert config["head"]["name"] == "linearface" and not config["train"]["init_from"], name
        assert ("_ts" in name) == bool(config["gate"]), name
        assert ("_gen" in name) == any(b["name"] == "frontal_decoder" for b in config["branches"]), name
    paper = configs["latse_linearface_ts_gen.yaml"]
    assert paper["head"]["options"] == {"scale": 64.0, "a": 0.88, "b": 0.88}
    assert paper["gate"]["options"]["teacher"] == configs["latse_teacher.yaml"]["work_dir"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name, latse_runs, noisy_data, tmp_path):
    """Each config builds on the tiny set (tiny backbone, a small decoder of the same options); the full LATSE
    config also trains a step."""
    teacher_dir, _ = latse_runs
    config = load_config(str(REPO / "experiments" / "latse" / "configs" / name), [
        "backbone.name=tiny", f"backbone.options={json.dumps(BACKBONE_OPTIONS)}", f"data.train={noisy_data}",
        "data.image_size=null", "data.crop_size=[16, 16]", "data.shuffle_buffer=8", "train.batch_size=8",
        "train.epochs=1", "train.steps_per_epoch=1", "train.strategy=default", "evaluation.pairs_dir=null",
        f"work_dir={tmp_path / 'run'}",
    ])
    if config["gate"]:
        config["gate"]["options"]["teacher"] = str(teacher_dir)
    for branch in config["branches"]:
        branch["options"].update(image_size=[16, 16], channels=[8, 4], blocks_per_stage=1, ssim_filter_size=7)
    trainer = prepare(config).trainer
    assert isinstance(trainer.head, heads.LinearFaceHead)
    if name == "latse_linearface_ts_gen.yaml":
        prepared = prepare(config)
        history = prepared.trainer.fit(prepared.dataset, epochs=1, steps_per_epoch=1, verbose=0)
        assert np.isfinite(history.history["loss"][0]) and "kept_fraction" in history.history
