"""TFLite and ONNX files of a training run's embedding path, checked for parity against its SavedModel.

    export_file("runs/mfn", "models/mfn.tflite", "tflite", quantize="float16", parity_pairs=pair_list)

The file keeps the SavedModel's contract (tfface.embedders): uint8 RGB [N, H, W, 3] in, (pixel - 127.5) / 128
applied inside, L2-normalised float32 [N, D] out. TFLite (TensorFlow's converter) holds the signatures
`serving_default` and `embed_flip`; ONNX (tf2onnx, opset ONNX_OPSET) holds the plain embedding only: its one graph
has one input "images" and one output "embedding", and the flip test runs the mirrored image as a second call.
TFLite quantisation: "dynamic" (int8 weights, float activations) or "float16" (float16 weights).

Parity: the written file, run by its own runtime (LiteRT, onnxruntime), against the SavedModel on the same images:
max |diff| of the unit embeddings and, given pairs, the verification accuracy of both (10-fold or the pairs' own
folds, no flip). A float32 file whose max |diff| exceeds FLOAT32_PARITY is not written; quantised files are
reported, not judged. The metadata (the SavedModel's, the format, the parity numbers) is FILE.json beside it.

`export_run_with_tflite` writes a SavedModel version folder that also holds `model.tflite` (float32, the three
signatures, parity-checked the same way), which serving.server --prefer_tflite_model serves.
"""
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfface import atomic, runs
from tfface.data.synth import SynthFaceRenderer, SynthOptions
from tfface.embedders import (
    DEFAULT_SIGNATURE,
    FILE_FORMATS as SUFFIX_FORMATS,
    FLIP_SIGNATURE,
    INPUT_KEY,
    METADATA_FILE,
    NORMALIZED_SIGNATURE,
    OUTPUT_KEY,
    TFLITE_IN_SAVED_MODEL,
    Embedder,
    SavedModelEmbedder,
    load_embedder,
    metadata_path,
)
from tfface.errors import ConfigError
from tfface.evaluation import PairList, evaluate_pairs, load_images
from tfface.export import export_backbone, export_metadata, export_run

FILE_FORMATS = {file_format: suffix for suffix, file_format in SUFFIX_FORMATS.items()}  # {"tflite": ".tflite", ...}
QUANTIZE_MODES = ("dynamic", "float16")
FLOAT32_PARITY = 1e-4
ONNX_OPSET = 17
SYNTH_IDENTITIES, SYNTH_IMAGES = 8, 4


class ParityError(RuntimeError):
    """A float32 file differs from its SavedModel by more than FLOAT32_PARITY."""


def tflite_bytes(saved_model_dir, quantize: Optional[str] = None,
                 signatures: Sequence[str] = (DEFAULT_SIGNATURE, FLIP_SIGNATURE)) -> bytes:
    """A tfface embedding SavedModel converted to a .tflite flatbuffer with its `signatures`."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=list(signatures))
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range int8 weights
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def onnx_bytes(saved_model_dir) -> bytes:
    """A tfface embedding SavedModel's serving_default converted by tf2onnx to a serialised ONNX model."""
    import tf2onnx

    saved_model = tf.saved_model.load(str(saved_model_dir))  # kept referenced: the signature needs its variables
    spec = saved_model.signatures[DEFAULT_SIGNATURE].structured_input_signature[1][INPUT_KEY]

    @tf.function
    def embed(images):
        return {OUTPUT_KEY: saved_model.signatures[DEFAULT_SIGNATURE](**{INPUT_KEY: images})[OUTPUT_KEY]}

    model, _ = tf2onnx.convert.from_function(
        embed, input_signature=[tf.TensorSpec(spec.shape, tf.uint8, name=INPUT_KEY)], opset=ONNX_OPSET)
    return model.SerializeToString()


def synth_faces(input_size) -> np.ndarray:
    """SYNTH_IDENTITIES x SYNTH_IMAGES SynthFaces renders (seed 0) at input_size (H, W): uint8 [N, H, W, 3], the
    parity images when no pairs are given."""
    height, width = input_size
    renderer = SynthFaceRenderer(SynthOptions(image_size=max(height, width)), batch_size=SYNTH_IDENTITIES)
    identities = np.repeat(np.arange(SYNTH_IDENTITIES), SYNTH_IMAGES)
    images = renderer.render(0, identities, np.tile(np.arange(SYNTH_IMAGES), SYNTH_IDENTITIES))["image"]
    if (height, width) == images.shape[1:3]:
        return images
    return tf.cast(tf.round(tf.image.resize(images, (height, width), antialias=True)), tf.uint8).numpy()


def parity(reference: Embedder, candidate: Embedder, pairs: Optional[PairList] = None) -> Dict:
    """Max |diff| of the two models' embeddings [N, D] on the pairs' distinct images (SynthFaces without pairs), and
    with pairs the verification accuracy of each and their difference (candidate - reference)."""
    if pairs is None:
        images, source = synth_faces(reference.input_size), f"{SYNTH_IDENTITIES * SYNTH_IMAGES} SynthFaces renders"
    else:
        paths, first, second = pairs.image_index()
        images, source = load_images(paths, reference.input_size), f"{len(pairs)} pairs"
    expected, got = reference(images, batch_size=64), candidate(images, batch_size=64)
    result = {"images": len(images), "source": source, "max_abs_diff": float(np.abs(expected - got).max())}
    if pairs is not None:
        accuracy = {name: float(evaluate_pairs(embeddings[first], embeddings[second], pairs.issame,
                                               folds=pairs.folds)["accuracy_mean"])
                    for name, embeddings in (("savedmodel", expected), ("exported", got))}
        result.update(accuracy_savedmodel=accuracy["savedmodel"], accuracy_exported=accuracy["exported"],
                      accuracy_difference=accuracy["exported"] - accuracy["savedmodel"])
    return result


def export_file(work_dir, out_file, file_format: str, quantize: Optional[str] = None,
                parity_pairs: Optional[PairList] = None) -> Dict:
    """Writes training run `work_dir`'s embedding path to `out_file` (.tflite or .onnx, must not exist) and its
    metadata to FILE.json, after the parity check (module docstring); returns the metadata.

    Raises ConfigError for bad arguments and ParityError, writing nothing, when float32 parity fails."""
    out_file = Path(out_file)
    if file_format not in FILE_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FILE_FORMATS)}, got '{file_format}'")
    if out_file.suffix.lower() != FILE_FORMATS[file_format]:
        raise ConfigError(f"format {file_format} writes a file ending in {FILE_FORMATS[file_format]}, got '{out_file}'")
    if quantize is not None and (file_format != "tflite" or quantize not in QUANTIZE_MODES):
        raise ConfigError(f"quantize is {' or '.join(QUANTIZE_MODES)} for tflite only, got '{quantize}' for "
                          f"{file_format}")
    for path in (out_file, metadata_path(out_file)):
        if path.exists():
            raise ConfigError(f"export target already exists: {path}")
    run = runs.read_run(work_dir)
    backbone = runs.build_backbone(run, Path(work_dir) / runs.BACKBONE_WEIGHTS)
    with tempfile.TemporaryDirectory(prefix="tfface-deploy-") as folder:
        saved_model_dir = export_backbone(backbone, Path(folder) / "savedmodel", export_metadata(run))
        data = onnx_bytes(saved_model_dir) if file_format == "onnx" else tflite_bytes(saved_model_dir, quantize)
        candidate_file = Path(folder) / f"model{FILE_FORMATS[file_format]}"
        candidate_file.write_bytes(data)
        reference = SavedModelEmbedder(saved_model_dir)
        checked = parity(reference, load_embedder(candidate_file), parity_pairs)
        metadata = {**reference.metadata, "format": file_format, "quantize": quantize}
    if quantize is None and checked["max_abs_diff"] > FLOAT32_PARITY:
        raise ParityError(f"{file_format} file differs from the SavedModel by max |diff| {checked['max_abs_diff']:.2e}"
                          f" > {FLOAT32_PARITY:.0e} on {checked['source']}; nothing written")
    metadata.update({
        "signatures": ({DEFAULT_SIGNATURE: metadata["signatures"][DEFAULT_SIGNATURE],
                        FLIP_SIGNATURE: metadata["signatures"][FLIP_SIGNATURE]} if file_format == "tflite" else
                       {"input": f"{INPUT_KEY}: uint8 [N, H, W, 3]", "output": f"{OUTPUT_KEY}: L2-normalised [N, D]",
                        "flip": "not in the graph: embed the mirrored image too and sum"}),
        "converter": {"tensorflow": tf.__version__, **({"tf2onnx": tf2onnx_version(), "opset": ONNX_OPSET}
                                                      if file_format == "onnx" else {})},
        "parity": checked,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    })
    atomic.write_json(metadata_path(out_file), metadata)
    atomic.write_bytes(out_file, data)  # after its metadata: a model file present always has its FILE.json
    return metadata


def add_tflite_copy(saved_model_dir: Path) -> Dict:
    """Writes `saved_model_dir/model.tflite` (float32, all three signatures) for TF Serving's --prefer_tflite_model,
    after the parity check of export_file; records its parity, size and sha256 under "tflite" in the SavedModel's
    metadata and returns that entry. ParityError, writing nothing, beyond FLOAT32_PARITY."""
    data = tflite_bytes(saved_model_dir, signatures=(DEFAULT_SIGNATURE, NORMALIZED_SIGNATURE, FLIP_SIGNATURE))
    with tempfile.TemporaryDirectory(prefix="tfface-deploy-") as folder:
        candidate_file = Path(folder) / TFLITE_IN_SAVED_MODEL
        candidate_file.write_bytes(data)
        checked = parity(SavedModelEmbedder(saved_model_dir), load_embedder(candidate_file))
    if checked["max_abs_diff"] > FLOAT32_PARITY:
        raise ParityError(f"tflite copy differs from the SavedModel by max |diff| {checked['max_abs_diff']:.2e} > "
                          f"{FLOAT32_PARITY:.0e} on {checked['source']}; nothing written")
    entry = {"file": TFLITE_IN_SAVED_MODEL, "parity": checked, "size_bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "converter": {"tensorflow": tf.__version__}}
    metadata = json.loads((saved_model_dir / METADATA_FILE).read_text())
    atomic.write_json(saved_model_dir / METADATA_FILE, {**metadata, "tflite": entry})
    atomic.write_bytes(saved_model_dir / TFLITE_IN_SAVED_MODEL, data)
    return entry


def export_run_with_tflite(work_dir, out_dir) -> Dict:
    """tfface.export.export_run with model.tflite in the version folder (add_tflite_copy) before it appears;
    returns the "tflite" metadata entry."""
    entries = []
    export_run(work_dir, out_dir, complete=lambda folder: entries.append(add_tflite_copy(folder)))
    return entries[0]


def tf2onnx_version() -> str:
    """tf2onnx's version (imported on use, like the converter: only ONNX exports need it)."""
    import tf2onnx

    return tf2onnx.__version__
