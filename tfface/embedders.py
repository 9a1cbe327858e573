"""Face embedding models loaded for inference, one interface for every deployment format.

    embedder = load_embedder("models/arcface/1")       # or models/arcface, model.tflite, model.onnx
    embeddings = embedder(uint8_images)                 # [N, H, W, 3] uint8 RGB -> [N, D] float32
    embeddings = embedder(uint8_images, flip=True)      # image and mirror embeddings summed, L2-normalised

The contract every format follows (tfface.export and tfface.deploy write it): one uint8 RGB input [N, H, W, 3]
with H and W fixed, one float32 output [N, D]. A SavedModel serves it as signature `serving_default` (input and
output keys may have any name); a TFLite file as its `serving_default` signature (or its only one); an ONNX file as
its only input and output. tfface's own exports normalise pixels inside and return L2-normalised rows, and carry
metadata: `assets.extra/tfface_metadata.json` in a SavedModel, `FILE.json` beside a .tflite or .onnx file.

`embed_batch` runs one batch as given (numpy or tf.Tensor, no checks): the fast path of an input pipeline.
"""
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfface.errors import ConfigError, shown

DEFAULT_SIGNATURE = "serving_default"
NORMALIZED_SIGNATURE = "embed_normalized"
FLIP_SIGNATURE = "embed_flip"
INPUT_KEY = "images"
OUTPUT_KEY = "embedding"
METADATA_FILE = os.path.join("assets.extra", "tfface_metadata.json")
FILE_FORMATS = {".tflite": "tflite", ".onnx": "onnx"}
TFLITE_IN_SAVED_MODEL = "model.tflite"  # a version folder's TFLite copy, as TF Serving's --prefer_tflite_model reads


def metadata_path(model_file) -> Path:
    """The metadata JSON beside a .tflite or .onnx file: FILE.json."""
    return Path(f"{model_file}.json")


def check_embedding_io(label: str, input_dtype, input_shape, output_shape) -> Tuple[Tuple[int, int], int]:
    """(H, W) and D of a model whose input is uint8 [N, H, W, 3] and output [N, D]; else ConfigError naming `label`.

    Shapes are sequences with None (or -1) for free sizes."""
    free = (None, -1)
    if (input_dtype != np.uint8 or len(input_shape) != 4 or input_shape[3] != 3
            or any(size in free for size in input_shape[1:3])):
        raise ConfigError(f"{label} must be uint8 [N, H, W, 3] with H and W fixed, got "
                          f"{np.dtype(input_dtype).name} {list(input_shape)}")
    if len(output_shape) != 2 or output_shape[1] in free:
        raise ConfigError(f"{label}: the output must be an embedding [N, D], got {list(output_shape)}")
    return (int(input_shape[1]), int(input_shape[2])), int(output_shape[1])


class Embedder:
    """uint8 RGB images [N, H, W, 3] -> float32 embeddings [N, D] (see the module docstring).

    Subclasses set path, format, input_size (H, W), embedding_size (D), metadata (dict or None) and
    signature (input and output names), and implement embed_batch.
    """

    path: Path
    format: str
    input_size: Tuple[int, int]
    embedding_size: int
    metadata: Optional[Dict] = None
    signature: Dict[str, str]

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (*self.input_size, 3)

    @property
    def description(self) -> Dict:
        """What a report says about the model."""
        described = {"source": str(self.path), "format": self.format, "input_size": list(self.input_size),
                     "embedding_size": self.embedding_size, "signature": self.signature}
        if self.metadata is not None:
            described["metadata"] = self.metadata
        return described

    def embed_batch(self, images) -> np.ndarray:
        """One model run: uint8 [n, H, W, 3] (numpy or tf.Tensor) -> float32 [n, D]."""
        raise NotImplementedError

    def embed_flip_batch(self, images) -> np.ndarray:
        """embed(x) + embed(x mirrored left-right), L2-normalised: [n, D]."""
        images = np.asarray(images)
        summed = self.embed_batch(images) + self.embed_batch(np.ascontiguousarray(images[:, :, ::-1]))
        return summed / np.linalg.norm(summed, axis=1, keepdims=True)

    def _checked(self, images, dtype: str) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"images must have shape [N, {', '.join(map(str, self.input_shape))}], got {images.shape}")
        if images.dtype != dtype:
            raise ValueError(f"images must be {dtype}, got {images.dtype}")
        return images

    def _in_batches(self, run, images: np.ndarray, batch_size: int) -> np.ndarray:
        chunks = [run(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_size), np.float32)

    def __call__(self, images, flip: bool = False, batch_size: int = 256) -> np.ndarray:
        """uint8 RGB images [N, H, W, 3] -> float32 [N, D]; `flip` sums image and mirror embeddings."""
        images = self._checked(images, "uint8")
        return self._in_batches(self.embed_flip_batch if flip else self.embed_batch, images, batch_size)


class SavedModelEmbedder(Embedder):
    """A SavedModel's `serving_default`; with tfface's `embed_flip` and `embed_normalized` signatures when present."""

    format = "savedmodel"

    def __init__(self, path, label: str = "model"):
        self.path = Path(path)
        try:
            self._saved_model = tf.saved_model.load(str(self.path))
        except Exception as error:  # protobuf DecodeError, OSError, tf.errors.*: all mean "not loadable"
            raise ConfigError(f"{label} {self.path}: not a loadable SavedModel: {first_line(error)}") from None
        signatures = self._saved_model.signatures
        if DEFAULT_SIGNATURE not in signatures:
            raise ConfigError(f"{label} {self.path}: no '{DEFAULT_SIGNATURE}' signature")
        self._function = signatures[DEFAULT_SIGNATURE]
        inputs = self._function.structured_input_signature[1]
        outputs = self._function.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(
                f"{label} {self.path}: '{DEFAULT_SIGNATURE}' must take one input and return one output, it has "
                f"inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        (self._input_key, spec), = inputs.items()
        (self._output_key, output_spec), = outputs.items()
        shape = spec.shape.as_list() if spec.shape.rank is not None else []
        self.input_size, self.embedding_size = check_embedding_io(
            f"{label} {self.path}: '{DEFAULT_SIGNATURE}' input '{self._input_key}'", spec.dtype.as_numpy_dtype,
            shape, output_spec.shape.as_list() if output_spec.shape.rank is not None else [])
        self.signature = {"input": self._input_key, "output": self._output_key}
        if (self.path / METADATA_FILE).is_file():
            self.metadata = json.loads((self.path / METADATA_FILE).read_text())

    def _run(self, signature: str, images) -> np.ndarray:
        function = self._saved_model.signatures[signature]
        return function(**{self._input_key: tf.convert_to_tensor(images)})[self._output_key].numpy()

    def embed_batch(self, images) -> np.ndarray:
        return self._run(DEFAULT_SIGNATURE, images)

    def embed_flip_batch(self, images) -> np.ndarray:
        if FLIP_SIGNATURE in self._saved_model.signatures:
            return self._run(FLIP_SIGNATURE, images)
        return super().embed_flip_batch(images)

    def embed_normalized(self, images, batch_size: int = 256) -> np.ndarray:
        """float32 images already normalised as (pixel - 127.5) / 128 [N, H, W, 3] -> float32 [N, D] unit rows
        (tfface exports only: their `embed_normalized` signature)."""
        if NORMALIZED_SIGNATURE not in self._saved_model.signatures:
            raise ValueError(f"{self.path}: no '{NORMALIZED_SIGNATURE}' signature (not a tfface export)")
        images = self._checked(images, "float32")
        return self._in_batches(lambda batch: self._run(NORMALIZED_SIGNATURE, batch), images, batch_size)


def read_file_metadata(model_file: Path, label: str = "model") -> Optional[Dict]:
    """The JSON metadata beside a .tflite or .onnx file, or None when it has none. When it holds a "sha256" (tfface's
    exports do), the model file's bytes must have that digest. A malformed side file or a differing digest is a
    ConfigError naming the file."""
    path = metadata_path(model_file)
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{label} {model_file}: its metadata {path} is not JSON: {first_line(error)}") from None
    if not isinstance(metadata, dict):
        raise ConfigError(f"{label} {model_file}: its metadata {path} is not a JSON object")
    expected = metadata.get("sha256")
    if expected is None:
        return metadata
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ConfigError(f"{label} {model_file}: its metadata {path} has a malformed sha256: {shown(expected)}")
    digest = hashlib.sha256()
    with open(model_file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ConfigError(f"{label} {model_file}: its bytes changed: sha256 {digest.hexdigest()}, but {path} says "
                          f"{expected}")
    return metadata


class TFLiteEmbedder(Embedder):
    """A .tflite file run by the LiteRT interpreter (ai-edge-litert): its `serving_default` signature (or its only
    one), with tfface's `embed_flip` signature when present."""

    format = "tflite"

    def __init__(self, path, label: str = "model", num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.metadata = read_file_metadata(self.path, label)
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads or os.cpu_count())
        except (ValueError, RuntimeError) as error:
            raise ConfigError(f"{label} {self.path}: not a TFLite model: {first_line(error)}") from None
        signatures = self._interpreter.get_signature_list()
        if DEFAULT_SIGNATURE in signatures:
            name = DEFAULT_SIGNATURE
        elif len(signatures) == 1:
            (name,) = signatures
        else:
            raise ConfigError(f"{label} {self.path}: no '{DEFAULT_SIGNATURE}' signature among {sorted(signatures)}")
        self._runner = self._interpreter.get_signature_runner(name)
        inputs, outputs = self._runner.get_input_details(), self._runner.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"{label} {self.path}: signature '{name}' must take one input and return one output, "
                              f"it has inputs {sorted(inputs)} and outputs {sorted(outputs)}")
        (self._input_key, spec), = inputs.items()
        (self._output_key, output_spec), = outputs.items()
        self.input_size, self.embedding_size = check_embedding_io(
            f"{label} {self.path}: input '{self._input_key}'", spec["dtype"], list(spec["shape_signature"]),
            list(output_spec["shape_signature"]))
        self._flip_runner = (self._interpreter.get_signature_runner(FLIP_SIGNATURE)
                             if FLIP_SIGNATURE in signatures else None)
        self.signature = {"name": name, "input": self._input_key, "output": self._output_key}

    def embed_batch(self, images) -> np.ndarray:
        return self._runner(**{self._input_key: np.asarray(images)})[self._output_key]

    def embed_flip_batch(self, images) -> np.ndarray:
        if self._flip_runner is None:
            return super().embed_flip_batch(images)
        return self._flip_runner(**{self._input_key: np.asarray(images)})[self._output_key]


class OnnxEmbedder(Embedder):
    """An .onnx file run by onnxruntime on the CPU: its only input and output."""

    format = "onnx"

    def __init__(self, path, label: str = "model"):
        import onnxruntime

        self.path = Path(path)
        self.metadata = read_file_metadata(self.path, label)
        try:
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types, not importable by name
            raise ConfigError(f"{label} {self.path}: not an ONNX model: {first_line(error)}") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"{label} {self.path}: must take one input and return one output, it has inputs "
                              f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}")
        onnx_types = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}
        dtype = onnx_types.get(inputs[0].type, inputs[0].type)

        def sizes(shape):
            return [size if isinstance(size, int) else None for size in shape]

        self.input_size, self.embedding_size = check_embedding_io(
            f"{label} {self.path}: input '{inputs[0].name}'", dtype, sizes(inputs[0].shape), sizes(outputs[0].shape))
        self._input_key, self._output_key = inputs[0].name, outputs[0].name
        self.signature = {"input": self._input_key, "output": self._output_key}

    def embed_batch(self, images) -> np.ndarray:
        return self._session.run([self._output_key], {self._input_key: np.asarray(images)})[0]


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


MAX_VERSION = 2 ** 63 - 1  # versions are int64 in TF Serving's protos


def model_versions(base_path, ignored: Optional[Callable[[Path], None]] = None) -> Dict[int, Path]:
    """The complete versions under a TF Serving model base path: {version: folder} for every sub-folder named by a
    non-negative integer (ASCII digits, at most MAX_VERSION) that holds a saved_model.pb (hidden partial exports are
    not numbers, so never listed). A folder whose number is larger is passed to `ignored` when given."""
    base_path = Path(base_path)
    versions = {}
    for child in base_path.iterdir():
        if child.name.isascii() and child.name.isdigit() and (child / "saved_model.pb").is_file():
            if int(child.name) <= MAX_VERSION:
                versions[int(child.name)] = child
            elif ignored is not None:
                ignored(child)
    return versions


def resolve_saved_model(path, version: Optional[int] = None, label: str = "model") -> Path:
    """A SavedModel folder itself, or the newest (or given) numeric version under a model base path; a missing one
    raises FileNotFoundError naming `label` and the path."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{label}: not found: {path}")
    if (path / "saved_model.pb").is_file():
        return path
    versions = model_versions(path)
    if not versions:
        raise FileNotFoundError(f"{label}: no SavedModel (saved_model.pb) in {path}, nor numeric version folders with "
                                f"one")
    if version is not None and version not in versions:
        raise FileNotFoundError(f"{label} {path}: no version {version}; found {sorted(versions)}")
    return versions[max(versions) if version is None else version]


def load_embedder(path, label: str = "model") -> Embedder:
    """The embedder of a .tflite or .onnx file, a SavedModel folder or a model base path (newest version);
    problems raise ConfigError or FileNotFoundError naming `label` and the path."""
    path = Path(path)
    file_format = FILE_FORMATS.get(path.suffix.lower())
    if file_format is not None:
        if not path.is_file():
            raise FileNotFoundError(f"{label}: not found: {path}")
        return TFLiteEmbedder(path, label) if file_format == "tflite" else OnnxEmbedder(path, label)
    if path.is_file():
        raise ConfigError(f"{label} {path}: expected a SavedModel folder, a .tflite or an .onnx file")
    return SavedModelEmbedder(resolve_saved_model(path, label=label), label)
