"""Embed image files with a model served over TF Serving's gRPC API (serving.server or tensorflow_model_server).

    python -m serving.client --target 127.0.0.1:8500 --model tiny --out emb.npy faces/ extra.jpg

Folders are searched recursively for images (IMAGE_SUFFIXES); files are embedded in sorted order per argument, in
batches, with a progress bar. Writes EMB.npy (float32 [N, D]) and beside it EMB.txt (the N file paths, one a line,
in the same order, UTF-8): a path with a line break in it (any that str.splitlines splits on) or not encodable as
UTF-8 is refused, by name, before any call, so row i of EMB.npy is always line i of EMB.txt. The input size and
dtype come from GetModelMetadata: images are read as RGB; a float32 signature gets (pixel - 127.5) / 128.

Photos are not crops: an image whose size is not the model's input is refused with one line naming `--align`
(it is never squashed to fit). With `--align`, each photo's face nearest its centre is detected (MTCNN) and
aligned onto the ArcFace template at the model's input size here, by tools.align's code (tfface.faces.FaceAligner),
and only the crops go over the wire; photos without a face are listed on stderr and left out of EMB.npy / EMB.txt.
"""
import argparse
import io
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tfface import cli  # noqa: E402

cli.quiet_tensorflow()  # before TensorFlow's first import

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tfface import atomic  # noqa: E402
from tfface.data.image_io import UnreadableImageError, open_image  # noqa: E402
from tfface.errors import check_output_folder  # noqa: E402
from tfface.faces import FaceAligner  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp")
MESSAGE_BYTES = 256 << 20


def check_listable(path) -> None:
    """Raises ValueError when `path` cannot be one line of a UTF-8 file list (line break or undecodable bytes)."""
    name = str(path)
    if "".join(name.splitlines()) != name:
        raise ValueError(f"file name with a line break cannot be listed one a line: {name!r}; rename it")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"file name is not valid UTF-8: {name!r}; rename it") from None


def image_files(paths: Sequence) -> List[Path]:
    """`paths` expanded: a file as given, a folder to its images (recursively, sorted, hidden ones skipped); each
    passes `check_listable`."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                child for child in path.rglob("*")
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in child.relative_to(path).parts)
            )
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"image or folder not found: {path}")
    for path in files:
        check_listable(path)
    return files


def connect(target: str) -> grpc.Channel:
    """An insecure channel to host:port with message limits raised to MESSAGE_BYTES both ways."""
    return grpc.insecure_channel(
        target,
        options=[("grpc.max_send_message_length", MESSAGE_BYTES), ("grpc.max_receive_message_length", MESSAGE_BYTES)],
    )


class InputSpec:
    """What a signature takes, read from GetModelMetadata: input key, output key, (height, width) and dtype."""

    def __init__(self, stub, model: str, signature: str, version: Optional[int], timeout: float):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        response = stub.GetModelMetadata(request, timeout=timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        if signature not in signature_map.signature_def:
            raise ValueError(
                f"model '{model}' has no signature '{signature}'; available: {sorted(signature_map.signature_def)}"
            )
        definition = signature_map.signature_def[signature]
        if len(definition.inputs) != 1:
            raise ValueError(f"signature '{signature}' takes {len(definition.inputs)} inputs; the client sends one")
        self.input_key, tensor_info = next(iter(definition.inputs.items()))
        self.output_key = "embedding" if "embedding" in definition.outputs else sorted(definition.outputs)[0]
        dims = [dim.size for dim in tensor_info.tensor_shape.dim]
        if len(dims) != 4 or dims[1] < 1 or dims[2] < 1 or dims[3] != 3:
            raise ValueError(f"signature '{signature}' input '{self.input_key}' is not [N, H, W, 3] images: {dims}")
        self.size = (dims[1], dims[2])
        if tensor_info.dtype not in (types_pb2.DT_UINT8, types_pb2.DT_FLOAT):
            raise ValueError(f"signature '{signature}' takes {types_pb2.DataType.Name(tensor_info.dtype)} images")
        self.normalize = tensor_info.dtype == types_pb2.DT_FLOAT


def read_image(path: Path, size: Tuple[int, int], header_only: bool = False) -> Optional[np.ndarray]:
    """An image file of `size` (height, width) as uint8 RGB [height, width, 3] (with `header_only`, only its size
    is checked and None returned); another size is refused (ValueError naming the file and `--align`)."""
    try:
        with open_image(path, path) as image:
            width, height = image.size
            fits = (height, width) == tuple(size)
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8) if fits and not header_only else None
    except UnreadableImageError as error:
        raise ValueError(f"cannot read image {path}: {error.reason}") from None
    if not fits:
        raise ValueError(f"{path} is {width} x {height} pixels but the model takes {size[1]} x {size[0]} (w x h): "
                         f"give --align to detect and align its face, or crops of that size")
    return pixels


def aligned_batch(aligner, paths: Sequence[Path]) -> Tuple[np.ndarray, List[Path], List[Path]]:
    """(crops uint8 [n, H, W, 3] of the faces nearest each photo's centre, the n photos they come from, the photos
    without a face); an unreadable photo raises ValueError naming it."""
    try:
        crops, _ = aligner.central_crops(list(paths))
    except UnreadableImageError as error:
        raise ValueError(f"cannot read image {error}") from None
    kept = [path for path, crop in zip(paths, crops) if crop is not None]
    faceless = [path for path, crop in zip(paths, crops) if crop is None]
    found = [crop for crop in crops if crop is not None]
    return (np.stack(found) if found else np.zeros((0, *aligner.input_size, 3), np.uint8)), kept, faceless


def predict(stub, spec: InputSpec, model: str, images: np.ndarray, signature: str = "serving_default",
            version: Optional[int] = None, timeout: float = 60.0) -> np.ndarray:
    """One Predict call: uint8 RGB images [n, H, W, 3] at spec.size -> float32 [n, D] (pixels normalised as
    (pixel - 127.5) / 128 first when the signature takes float images)."""
    if spec.normalize:
        images = (images.astype(np.float32) - 127.5) / 128.0
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[spec.input_key].CopyFrom(tf.make_tensor_proto(images))
    response = stub.Predict(request, timeout=timeout)
    return tf.make_ndarray(response.outputs[spec.output_key]).astype(np.float32)


def embed_files(
    target: str, model: str, paths: Sequence, batch_size: int = 32, signature: str = "serving_default",
    version: Optional[int] = None, timeout: float = 60.0, progress: bool = True, align: bool = False,
    detector_options: Optional[dict] = None,
) -> Tuple[np.ndarray, List[str]]:
    """Embeds the images in `paths` (files or folders) with `model` at `target` (host:port).

    Returns (embeddings float32 [N, D], the N file paths as strings, in order). Without `align` every image must
    have the model's input size; with it, each photo's central face is detected and aligned here
    (tfface.faces.FaceAligner, `detector_options` its keyword arguments) and photos without a face are left out
    (named on stderr). gRPC failures raise grpc.RpcError; missing or unreadable files, and images of another size
    without `align`, raise FileNotFoundError / ValueError naming them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    files = image_files(paths)
    with connect(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        spec = InputSpec(stub, model, signature, version, timeout)
        aligner = FaceAligner(spec.size, **(detector_options or {})) if align else None
        if aligner is None:
            for path in files:  # every size checked from the headers before any call
                read_image(path, spec.size, header_only=True)
        chunks, embedded, faceless = [], [], []
        with tqdm(total=len(files), unit="image", disable=not progress, file=sys.stderr) as bar:
            for start in range(0, len(files), batch_size):
                if aligner is None:
                    kept = files[start : start + batch_size]
                    batch = np.stack([read_image(path, spec.size) for path in kept])
                else:
                    batch, kept, missed = aligned_batch(aligner, files[start : start + batch_size])
                    faceless += missed
                if len(batch):
                    embeddings = predict(stub, spec, model, batch, signature, version, timeout)
                    if len(embeddings) != len(batch):
                        raise ValueError(f"{target} answered {len(embeddings)} embeddings for {len(batch)} images")
                    chunks.append(embeddings)
                    embedded += kept
                bar.update(len(files[start : start + batch_size]))
    if faceless:
        print(f"no face found in {len(faceless)} photo(s), left out:\n"
              + "\n".join(f"  {path}" for path in faceless), file=sys.stderr)
    if not chunks:
        raise ValueError(f"no face found in any of the {len(files)} photo(s)")
    return np.concatenate(chunks), [str(path) for path in embedded]


def save_embeddings(out, embeddings: np.ndarray, files: Sequence[str]) -> Tuple[Path, Path]:
    """Writes OUT.npy and OUT.txt (one path a line), each to a temporary file renamed into place; returns both.
    Raises ValueError before writing when the names would not give one line per row."""
    if len(files) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(files)} file names")
    for name in files:
        check_listable(name)
    out = Path(out)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(embeddings))
    atomic.write_bytes(out, buffer.getvalue())
    listing = out.with_suffix(".txt")
    atomic.write_text(listing, "".join(f"{path}\n" for path in files))
    return out, listing


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8500", help="server host:port")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--signature", default="serving_default", help="e.g. embed_flip for flip-summed embeddings")
    parser.add_argument("--version", type=int, help="a specific version (default: the served one)")
    parser.add_argument("--out", required=True, help="EMB.npy; the file list goes to EMB.txt")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument("--align", action="store_true",
                        help="detect and align each photo's face here (MTCNN, ArcFace template) and send the crops")
    parser.add_argument("--min-face-size", type=int, default=20, help="with --align: smallest face, in pixels")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    cli.add_verbose_argument(parser)
    return parser.parse_args(argv)


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        check_output_folder(Path(args.out).parent, "--out", args.out)
        embeddings, files = embed_files(
            args.target, args.model, args.paths, batch_size=args.batch_size, signature=args.signature,
            version=args.version, timeout=args.timeout, progress=True, align=args.align,
            detector_options={"min_face_size": args.min_face_size},
        )
    except grpc.RpcError as error:
        print(f"error: {args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    try:
        array_path, listing_path = save_embeddings(args.out, embeddings, files)
    except OSError as error:
        print(f"error: --out {args.out}: cannot write: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"{len(files)} embeddings of size {embeddings.shape[1]} -> {array_path}, file list -> {listing_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
