"""Inference-only SavedModel export of a training run's embedding path, in TF Serving's layout.

    export_run("runs/arcface", "models/arcface/1")
    model = load_exported("models/arcface")          # the newest version under a model base path
    embeddings = model(uint8_images)                 # [N, H, W, 3] uint8 -> [N, D] float32, unit rows

The loaded model is a `tfface.embedders.SavedModelEmbedder`; tfface.deploy converts an export to TFLite or ONNX.

The backbone is rebuilt from the run dir (tfface.runs: run.json's backbone name and input shape, config.yaml's
backbone options), loads RUN/backbone.weights.h5, and is written with `keras.export.ExportArchive`. Nothing else of the run (head,
regularizer centres, branches, teacher, optimizer state) is built, so none of it can reach the SavedModel.

Signatures (input key "images", output key "embedding", [N, D] float32 L2-normalised rows):
- serving_default: uint8 [N, H, W, 3] RGB pixels; (pixel - 127.5) / 128 is applied inside.
- embed_normalized: float32 [N, H, W, 3] pixels already normalised as (pixel - 127.5) / 128.
- embed_flip: uint8 [N, H, W, 3]; e(x) + e(x mirrored left-right), e the backbone's raw embedding, re-normalised
  to length 1 (insightface's flip test): the normalised sum, not a sum of unit vectors.
Metadata (backbone, its options, input shape, embedding size, config hash, signatures) is the JSON file
assets.extra/tfface_metadata.json, SavedModel's folder for files the graph does not load.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

import tfface
from tfface import runs
from tfface.data.pipeline import normalize_images
from tfface.embedders import (
    DEFAULT_SIGNATURE,
    FLIP_SIGNATURE,
    INPUT_KEY,
    METADATA_FILE,
    NORMALIZED_SIGNATURE,
    OUTPUT_KEY,
    SavedModelEmbedder,
    resolve_saved_model,
)
from tfface.errors import ConfigError


def embedding_archive(backbone: keras.Model) -> keras.export.ExportArchive:
    """An ExportArchive with the three embedding signatures of `backbone` (see the module docstring).

    `archive.track(backbone)` is not called: it would store every variable a second time under `variables/`.
    """
    height, width, channels = backbone.input_shape[1:]

    def unit_embedding(normalized_images):
        return keras.ops.normalize(backbone(normalized_images, training=False)["embedding"], axis=-1, order=2)

    def embed_uint8(images):
        return {OUTPUT_KEY: unit_embedding(normalize_images(images))}

    def embed_normalized(images):
        return {OUTPUT_KEY: unit_embedding(images)}

    def embed_flip(images):
        normalized = normalize_images(images)
        both = backbone(keras.ops.concatenate([normalized, keras.ops.flip(normalized, axis=2)], axis=0),
                        training=False)["embedding"]
        plain, mirrored = keras.ops.split(both, 2, axis=0)
        return {OUTPUT_KEY: keras.ops.normalize(plain + mirrored, axis=-1, order=2)}

    def spec(dtype):
        return [tf.TensorSpec((None, height, width, channels), dtype, name=INPUT_KEY)]

    archive = keras.export.ExportArchive()  # the endpoints' variables are tracked as they are traced
    archive.add_endpoint(DEFAULT_SIGNATURE, embed_uint8, spec(tf.uint8))
    archive.add_endpoint(NORMALIZED_SIGNATURE, embed_normalized, spec(tf.float32))
    archive.add_endpoint(FLIP_SIGNATURE, embed_flip, spec(tf.uint8))
    return archive


def export_backbone(backbone: keras.Model, out_dir, metadata: Dict,
                    complete: Optional[Callable[[Path], None]] = None) -> Path:
    """Writes `backbone`'s embedding SavedModel and `metadata` to `out_dir` (must not exist) through a temporary
    sibling folder and one rename, so a server polling the parent never sees a half-written version. `complete`, if
    given, adds to the temporary folder before the rename (tfface.deploy's model.tflite); what it raises writes
    nothing."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfigError(f"export target already exists: {out_dir} (versions are immutable: pick a new number)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        embedding_archive(backbone).write_out(str(temporary), verbose=False)
        metadata_path = temporary / METADATA_FILE
        metadata_path.parent.mkdir()
        metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
        if complete is not None:
            complete(temporary)
        os.chmod(temporary, 0o755)
        os.rename(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


def export_metadata(run: Dict) -> Dict:
    """The metadata of an export of run `run` (`read_run`'s dict): the run's fields, preprocessing, signatures."""
    return {
        **run,
        "preprocessing": "(pixel - 127.5) / 128 on RGB uint8 inside serving_default and embed_flip",
        "signatures": {
            DEFAULT_SIGNATURE: "uint8 images -> L2-normalised embedding",
            NORMALIZED_SIGNATURE: "normalised float32 images -> L2-normalised embedding",
            FLIP_SIGNATURE: "uint8 images -> e(x) + e(mirrored x) re-normalised to length 1 (e: raw backbone embedding)",
        },
        "tfface_version": tfface.__version__,
    }


def export_run(work_dir, out_dir, complete: Optional[Callable[[Path], None]] = None) -> Path:
    """Exports the embedding path of training run `work_dir` as a SavedModel at `out_dir` (`complete`: see
    export_backbone); returns `out_dir`."""
    run = runs.read_run(work_dir)
    backbone = runs.build_backbone(run, Path(work_dir) / runs.BACKBONE_WEIGHTS)
    return export_backbone(backbone, out_dir, export_metadata(run), complete)


def load_exported(path, version: Optional[int] = None) -> SavedModelEmbedder:
    """Loads an export: `path` is a version folder, or a model base path whose newest (or given) version is used."""
    path = resolve_saved_model(path, version, label="exported model")
    if not (path / METADATA_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {METADATA_FILE} (not written by tfface.export?)")
    return SavedModelEmbedder(path, label="exported model")
