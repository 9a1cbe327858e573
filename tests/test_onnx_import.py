"""ONNX import (tfface/onnx_import.py, tools.import_weights): an IResNet graph in arcface_torch's export layout built
here with onnx.helper, and the shared pretrained MobileFaceNet, both against onnxruntime."""
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tfface import backbones  # noqa: E402
from tfface.onnx_import import OnnxImportError, import_onnx, max_normalised_difference, onnx_embeddings  # noqa: E402
from tools import import_weights  # noqa: E402

SHARED_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "mobilefacenet_fr_feature.onnx"
SIZE = 32  # IResNet-18 at 32x32: stage4 is 2x2, so the FC reads a flattened 2x2x512 map


class TorchExport:
    """Writes an arcface_torch IResNet as `torch.onnx.export` does in eval mode: a BN right after a conv is folded
    into the conv's weight and bias; the BNs before a conv (IBasicBlock.bn1), after the last block (bn2) and after the
    FC (features) stay BatchNormalization nodes; Flatten then Gemm(transB=1)."""

    def __init__(self, seed: int = 0):
        self.random = np.random.default_rng(seed)
        self.nodes, self.initializers = [], []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def constant(self, value) -> str:
        name = self.name("w")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs, **attributes) -> str:
        output = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def bn_params(self, channels: int):
        return (1 + 0.1 * self.random.standard_normal(channels), 0.1 * self.random.standard_normal(channels),
                0.1 * self.random.standard_normal(channels), 1 + 0.1 * self.random.random(channels))

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int, stride: int) -> str:
        """Conv (no bias) + BN folded: w' = w gamma / sqrt(v + eps), b' = beta - mean gamma / sqrt(v + eps)."""
        weight = self.random.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2.0 / (cin * kernel * kernel))
        gamma, beta, mean, variance = self.bn_params(cout)
        factor = gamma / np.sqrt(variance + 1e-5)
        return self.node("Conv", [x, self.constant(weight * factor[:, None, None, None]),
                                  self.constant(beta - mean * factor)],
                         kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[kernel // 2] * 4,
                         group=1, dilations=[1, 1])

    def batch_norm(self, x: str, channels: int, unit_scale: bool = False) -> str:
        gamma, beta, mean, variance = self.bn_params(channels)
        gamma = np.ones(channels) if unit_scale else gamma
        return self.node("BatchNormalization", [x] + [self.constant(v) for v in (gamma, beta, mean, variance)],
                         epsilon=1e-5)

    def prelu(self, x: str, channels: int) -> str:
        return self.node("PRelu", [x, self.constant(0.25 + 0.05 * self.random.standard_normal((channels, 1, 1)))])

    def iresnet(self, layers=(2, 2, 2, 2), size: int = SIZE, embedding: int = 512):
        x = self.prelu(self.conv_bn("data", 3, 64, 3, 1), 64)
        cin = 64
        for width, blocks in zip((64, 128, 256, 512), layers):
            for block in range(blocks):
                stride = 2 if block == 0 else 1
                identity = x
                out = self.batch_norm(x, cin)
                out = self.prelu(self.conv_bn(out, cin, width, 3, 1), width)
                out = self.conv_bn(out, width, width, 3, stride)
                if stride != 1 or cin != width:
                    identity = self.conv_bn(x, cin, width, 1, stride)
                x = self.node("Add", [out, identity])
                cin = width
        x = self.node("Flatten", [self.batch_norm(x, 512)], axis=1)
        features = 512 * (size // 16) ** 2
        weight = self.random.standard_normal((embedding, features)) / np.sqrt(features)
        x = self.node("Gemm", [x, self.constant(weight), self.constant(0.1 * self.random.standard_normal(embedding))],
                      alpha=1.0, beta=1.0, transB=1)
        return self.batch_norm(x, embedding, unit_scale=True)

    def save(self, output: str, path: Path, size: int = SIZE) -> Path:
        graph = helper.make_graph(
            self.nodes, "iresnet", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 512])], initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, str(path))
        return path


@pytest.fixture(scope="module")
def iresnet_onnx(tmp_path_factory) -> Path:
    export = TorchExport()
    output = export.iresnet()
    return export.save(output, tmp_path_factory.mktemp("onnx") / "iresnet18.onnx")


def faces(count: int, size: int = SIZE, seed: int = 1) -> np.ndarray:
    """Random normalised images [count, size, size, 3] in [-1, 1)."""
    return np.random.default_rng(seed).uniform(-1, 1, (count, size, size, 3)).astype(np.float32)


def test_iresnet_in_arcface_torch_layout_equals_onnxruntime(iresnet_onnx):
    backbone = backbones.get_backbone("iresnet18", input_shape=(SIZE, SIZE, 3))
    images = faces(6)
    result = import_onnx(iresnet_onnx, backbone, images)
    ours = np.asarray(backbone(images, training=False)["embedding"])
    reference = onnx_embeddings(iresnet_onnx, images)
    assert max_normalised_difference(ours, reference) <= 1e-4
    # the raw embeddings too (the last BN has no gamma: it must have been read, not unfolded)
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
    assert result.used_nodes == len(onnx.load(str(iresnet_onnx)).graph.node)
    # folded: stem + 2 per block + the 4 stages' downsample shortcuts;
    # read as BatchNormalization nodes: bn1 of every block, bn2, features
    assert len(result.unfolded) == 1 + 2 * 8 + 4


def test_unfolded_batch_norm_keeps_the_function_and_carries_the_statistics(iresnet_onnx):
    """gamma (z - mu) / sqrt(v + eps) + beta with gamma = sqrt(v + eps), beta = mu + b is z + b; mu and v are the
    calibration batch's per-channel mean and (biased) variance of z, computed here with numpy."""
    backbone = backbones.get_backbone("iresnet18", input_shape=(SIZE, SIZE, 3))
    images = faces(4)
    result = import_onnx(iresnet_onnx, backbone, images)
    import keras

    probe = keras.Model(backbone.input, [layer.input for layer, _ in result.unfolded])
    for (layer, bias), z in zip(result.unfolded, probe(images)):  # maps of 32x32 down to 2x2: counts differ
        z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
        gamma, beta, mean, variance = [np.asarray(w, np.float64) for w in layer.get_weights()]
        atol = 1e-5 * np.abs(z).max()  # float32 rounding of the maps themselves
        np.testing.assert_allclose(mean, z.mean(axis=0), rtol=1e-4, atol=atol, err_msg=layer.name)
        np.testing.assert_allclose(variance, z.var(axis=0), rtol=1e-4, atol=atol * np.abs(z).max(), err_msg=layer.name)
        np.testing.assert_allclose(gamma, np.sqrt(z.var(axis=0) + 1e-5), rtol=1e-4, err_msg=layer.name)
        np.testing.assert_allclose(beta, z.mean(axis=0) + bias, rtol=1e-4, atol=atol, err_msg=layer.name)


def _mutated(path: Path, tmp_path: Path, mutate) -> Path:
    model = onnx.load(str(path))
    mutate(model.graph)
    target = tmp_path / "mutated.onnx"
    onnx.save(model, str(target))
    return target


def test_a_node_that_does_not_fit_is_named(iresnet_onnx, tmp_path):
    def relu_for_first_prelu(graph):
        node = next(node for node in graph.node if node.op_type == "PRelu")
        node.op_type = "Relu"
        del node.input[1:]

    path = _mutated(iresnet_onnx, tmp_path, relu_for_first_prelu)
    backbone = backbones.get_backbone("iresnet18", input_shape=(SIZE, SIZE, 3))
    with pytest.raises(OnnxImportError, match=r"node 'prelu_5' \(Relu\) does not fit backbone layer 'stem_prelu'"):
        import_onnx(path, backbone, faces(2))


def test_a_wrong_stride_is_refused_at_its_conv(iresnet_onnx, tmp_path):
    def stem_stride_two(graph):
        stem = graph.node[0]
        for attribute in stem.attribute:
            if attribute.name == "strides":
                attribute.ints[:] = [2, 2]

    path = _mutated(iresnet_onnx, tmp_path, stem_stride_two)
    backbone = backbones.get_backbone("iresnet18", input_shape=(SIZE, SIZE, 3))
    with pytest.raises(OnnxImportError, match=r"node 'conv_3' \(Conv\) does not fit backbone layer 'stem_conv'"):
        import_onnx(path, backbone, faces(2))


def test_the_wrong_backbone_is_refused(iresnet_onnx):
    backbone = backbones.get_backbone("iresnet34", input_shape=(SIZE, SIZE, 3))
    with pytest.raises(OnnxImportError, match="does not fit backbone layer 'stage1_block3"):
        import_onnx(iresnet_onnx, backbone, faces(2))


def test_cli_writes_a_run_dir_that_export_reads(iresnet_onnx, tmp_path, capsys):
    from PIL import Image

    from tfface.export import export_run, load_exported

    images = tmp_path / "faces"
    images.mkdir()
    for index, image in enumerate(faces(5)):
        Image.fromarray(np.clip(image * 128 + 127.5, 0, 255).astype(np.uint8)).save(images / f"{index}.png")
    out = tmp_path / "runs" / "imported"
    code = import_weights.main(["--onnx", str(iresnet_onnx), "--backbone", "iresnet18",
                                "--option", f"input_shape=[{SIZE}, {SIZE}, 3]", "--images", str(images),
                                "--out", str(out), "--count", "5"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "import.json").read_text())
    assert report["max_abs_difference"] <= 1e-4 and report["check_images"] == 5
    assert json.loads((out / "run.json").read_text())["embedding_size"] == 512
    exported = load_exported(export_run(out, tmp_path / "models" / "imported" / "1"))
    pixels = np.stack([np.asarray(Image.open(images / f"{index}.png")) for index in range(5)])
    reference = onnx_embeddings(iresnet_onnx, (pixels.astype(np.float32) - 127.5) / 128)
    assert max_normalised_difference(exported(pixels), reference) <= 1e-4
    # an existing --out is one error line, and nothing else is written
    assert import_weights.main(["--onnx", str(iresnet_onnx), "--backbone", "iresnet18", "--images", str(images),
                                "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_cli_refuses_a_file_that_is_not_onnx(tmp_path, capsys):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a protobuf \xff\xfe")
    images = tmp_path / "faces"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(images / "a.png")
    code = import_weights.main(["--onnx", str(bogus), "--backbone", "mobilefacenet", "--images", str(images),
                                "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: ") and "model.onnx" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.skipif(not SHARED_MODEL.is_file(), reason=f"pretrained model not found at {SHARED_MODEL}")
def test_shared_mobilefacenet_equals_onnxruntime_on_real_faces(shared_data):
    """The shared MobileFaceNet (every BN folded) on real CFP photos, resized to 112x112: parity within 1e-4; and
    after unfolding, training-mode BN (batch statistics of the calibration batch itself) gives the same embedding."""
    from tfface.data.image_io import read_rgb
    from PIL import Image

    photos = sorted((shared_data / "cfp" / "images").glob("00[1-2]/*/*.jpg"))[:16]
    images = np.stack([np.asarray(Image.fromarray(read_rgb(path)).resize((112, 112))) for path in photos])
    images = (images.astype(np.float32) - 127.5) / 128
    backbone = backbones.get_backbone("mobilefacenet")
    result = import_onnx(SHARED_MODEL, backbone, images)
    ours = np.asarray(backbone(images, training=False)["embedding"])
    assert max_normalised_difference(ours, onnx_embeddings(SHARED_MODEL, images)) <= 1e-4
    assert len(result.unfolded) == 50
    training = np.asarray(backbone(images, training=True)["embedding"])
    assert max_normalised_difference(training, ours) <= 1e-3


def test_images_of_an_align_output_folder_are_its_crops_of_the_network_size(tmp_path, capsys):
    """tools.align --out with 112x112 (value 200) and 112x96 (value 10) crops: the 112x112 ones are read."""
    from PIL import Image

    aligned = tmp_path / "aligned"
    for (height, width), value in (((112, 112), 200), ((112, 96), 10)):
        (aligned / f"{height}x{width}" / "alice").mkdir(parents=True)
        Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(aligned / f"{height}x{width}/alice/1.png")
    (aligned / "align_report.csv").write_text("path,status,faces,confidence,detail\n")
    faces = import_weights.read_faces(str(aligned), 4, (112, 112))
    np.testing.assert_array_equal(faces, np.full((1, 112, 112, 3), (200 - 127.5) / 128, np.float32))
    with pytest.raises(ValueError, match=r"--images: .*aligned is a tools.align output folder without 96x96 crops "
                                         r"\(it has 112x112, 112x96\)"):
        import_weights.read_faces(str(aligned), 4, (96, 96))
