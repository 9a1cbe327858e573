"""Checks of PredictRequest contents against a SignatureDef, each failure a ServingError with its gRPC status:
unknown version label, missing or extra input keys, wrong dtype, wrong rank or size, empty or oversized batch,
unknown output names (all INVALID_ARGUMENT except the label, NOT_FOUND)."""
from typing import Dict, Mapping, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2

from serving.errors import ServingError


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def requested_version(model_spec: model_pb2.ModelSpec) -> Optional[int]:
    """The version a ModelSpec asks for, None for 'the served one'; labels are not configured here (NOT_FOUND)."""
    if model_spec.WhichOneof("version_choice") == "version_label":
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown version label '{model_spec.version_label}'")
    if model_spec.HasField("version"):
        return model_spec.version.value
    return None


def _dims(tensor_info: meta_graph_pb2.TensorInfo) -> Optional[Sequence[int]]:
    if tensor_info.tensor_shape.unknown_rank:
        return None
    return [dim.size for dim in tensor_info.tensor_shape.dim]


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def _input_array(key: str, proto: tensor_pb2.TensorProto, expected: meta_graph_pb2.TensorInfo) -> np.ndarray:
    if proto.dtype != expected.dtype:
        raise _invalid(f"input '{key}' must be {_dtype_name(expected.dtype)}, got {_dtype_name(proto.dtype)}")
    try:
        array = tf.make_ndarray(proto)
    except (ValueError, TypeError) as error:
        raise _invalid(f"input '{key}' is not a valid tensor: {error}") from None
    dims = _dims(expected)
    if dims is not None:
        expected_shape = "[" + ", ".join("N" if size == -1 else str(size) for size in dims) + "]"
        if array.ndim != len(dims) or any(size not in (-1, got) for size, got in zip(dims, array.shape)):
            raise _invalid(f"input '{key}' must have shape {expected_shape}, got {list(array.shape)}")
    return array


def checked_inputs(
    signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, tensor_pb2.TensorProto], max_batch_size: int
) -> Dict[str, np.ndarray]:
    """The request's input tensors as numpy arrays, after checking keys, dtypes, shapes and batch size."""
    missing = sorted(set(signature.inputs) - set(inputs))
    extra = sorted(set(inputs) - set(signature.inputs))
    if missing or extra:
        raise _invalid(
            f"inputs must be exactly {sorted(signature.inputs)}; missing {missing}, unexpected {extra}"
        )
    arrays = {key: _input_array(key, inputs[key], signature.inputs[key]) for key in sorted(signature.inputs)}
    batch_sizes = {array.shape[0] for key, array in arrays.items() if (_dims(signature.inputs[key]) or [0])[0] == -1}
    if len(batch_sizes) > 1:
        raise _invalid(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    if batch_sizes:
        batch_size = batch_sizes.pop()
        if batch_size == 0:
            raise _invalid("empty batch: the first dimension of the inputs is 0")
        if batch_size > max_batch_size:
            raise _invalid(f"batch of {batch_size} is larger than the server's max_batch_size {max_batch_size}")
    return arrays


def checked_output_filter(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> Sequence[str]:
    """The output keys to return: all of the signature's when the filter is empty, else the filter (each known)."""
    unknown = sorted(set(output_filter) - set(signature.outputs))
    if unknown:
        raise _invalid(f"output_filter names unknown output(s) {unknown}; available: {sorted(signature.outputs)}")
    return list(output_filter) or sorted(signature.outputs)
