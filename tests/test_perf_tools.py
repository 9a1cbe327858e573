"""The performance benchmarks on tiny settings: the training-step profile by part and the alignment rate table."""
import numpy as np
import pytest
from PIL import Image

from benchmarks import bench_align, profile_step
from tfface.data import detection
from tfface.data.detection import DetectedFace


def _table(lines):
    return {row[0]: row[1:] for row in ([cell.strip() for cell in line.strip("|").split("|")]
                                        for line in lines if line.startswith("| ") and "---" not in line)}


def test_profile_step_splits_a_traced_step_into_parts(capsys):
    assert profile_step.main(["--backbone", "tiny", "--batch", "2", "--size", "32", "32", "--classes", "10",
                              "--warmup", "1", "--steps", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("tiny + arcface (10 classes), batch 2, 32x32, fp32, 1 traced step(s):")
    table = _table(lines[1:])
    assert list(table) == ["part", *profile_step.PARTS]
    shares = {part: float(cells[1].rstrip("%")) for part, cells in table.items() if part != "part"}
    assert sum(shares.values()) == pytest.approx(100.0, abs=0.5)
    assert shares["convolution"] > 0 and shares["batch norm"] > 0 and shares["head and loss"] > 0


def test_profile_step_lists_the_costliest_op_types(capsys):
    assert profile_step.main(["--backbone", "tiny", "--batch", "2", "--size", "32", "32", "--classes", "10",
                              "--warmup", "1", "--steps", "1", "--ops", "3"]) == 0
    out = capsys.readouterr().out
    listed = out.split("| part | op type | ms per step |")[1].strip().splitlines()[1:]
    assert len(listed) == 3 and all(line.count("|") == 4 for line in listed)
    times = [float(line.strip("|").split("|")[2]) for line in listed]
    assert times == sorted(times, reverse=True)


def test_profile_step_names_ops_by_their_layer():
    model = profile_step.backbones.get_backbone("tiny", input_shape=(32, 32, 3))
    layers = profile_step.layer_classes(model)
    def part(name, op_type="Mul"):
        return profile_step.part_of(name, op_type, model, layers, "arc_face_head")

    assert part(f"gradient_tape/{model.name}_1/stem_conv_1/convolution/Conv2DBackpropFilter") == "convolution"
    assert part(f"{model.name}_1/stem_bn_1/FusedBatchNormV3") == "batch norm"
    assert part("arc_face_head_1/MatMul") == "head and loss"
    assert part("sgd/AssignSubVariableOp_3", "AssignSubVariableOp") == "optimizer update"
    assert part("IDLE", "IDLE") == profile_step.PARTS[-1]
    assert part("AddN_4") == "other"


class StandInDetector:
    """One fixed face in the middle of every photo (batch interface included)."""

    def __init__(self, **options):
        pass

    def detect(self, image):
        height, width = image.shape[:2]
        points = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.72], [0.62, 0.72]]) * [width, height]
        return [DetectedFace(box=np.array([0.2 * width, 0.2 * height, 0.8 * width, 0.9 * height]), confidence=0.99,
                             landmarks=points)]

    def detect_batch(self, images):
        return [self.detect(image) for image in images]


def test_bench_align_times_each_batch_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(detection, "FaceDetector", StandInDetector)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        Image.fromarray(rng.integers(0, 255, size=(40 + index, 50, 3), dtype=np.uint8)).save(photos / f"{index}.png")
    assert bench_align.main(["--input", str(photos), "--limit", "10", "--resize", "64", "64", "--batches", "1", "4",
                             "--workers", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith(f"tools.align on 10 photos of {photos} (64x64)") for line in lines)
    table = _table(lines)
    rows = [cells for batch, cells in table.items() if batch != "--batch"]
    assert list(table)[1:] == ["1", "4"] and all(cells[:3] == ["0", "10", "64x64"] for cells in rows)
    for cells in rows:
        wall, rate, per_cpu = map(float, cells[3:6])
        # wall has 2 decimals and the rate 1: the rate lies within the rounding of 10 / wall
        assert 10 / (wall + 0.005) - 0.05 <= rate <= 10 / max(wall - 0.005, 1e-3) + 0.05 and per_cpu > 0
    assert bench_align.main(["--input", str(photos), "--limit", "5"]) == 2
    assert "needs more than 8 files" in capsys.readouterr().err
