"""Checks of PredictRequest contents against a SignatureDef, each failure a ServingError with its gRPC status:
unknown version label (NOT_FOUND); missing or extra input keys, wrong dtype, negative or unknown dims, wrong rank or
size, empty or oversized batch, a tensor larger than the message limit, a payload that does not fit the shape, an
integer out of its dtype's range, unknown output names (INVALID_ARGUMENT, one line each).

Everything is checked from the TensorProto header (dtype, dims, payload length) before any array is built, so a
small request cannot make the server allocate more than a valid request could.
"""
from typing import Dict, List, Mapping, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2

from serving.errors import ServingError, echoed

MAX_RANK = 32  # dims a request tensor may list (TensorFlow's own limit is 254; an image batch has 4)

# The TensorProto field that holds each dtype's values when tensor_content is empty.
VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val", types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val", types_pb2.DT_STRING: "string_val",
}


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def requested_version(model_spec: model_pb2.ModelSpec) -> Optional[int]:
    """The version a ModelSpec asks for, None for 'the served one'; labels are not configured here (NOT_FOUND)."""
    if model_spec.WhichOneof("version_choice") == "version_label":
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown version label '{echoed(model_spec.version_label)}'")
    if model_spec.HasField("version"):
        return model_spec.version.value
    return None


def _dims(tensor_info: meta_graph_pb2.TensorInfo) -> Optional[Sequence[int]]:
    if tensor_info.tensor_shape.unknown_rank:
        return None
    return [dim.size for dim in tensor_info.tensor_shape.dim]


def _dtype_name(dtype: int) -> str:
    """DT_FLOAT, ...; a number no DataType has (a client may send any enum value) is named as such."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"unknown dtype {dtype}"


def _checked_header(key: str, proto: tensor_pb2.TensorProto, expected: meta_graph_pb2.TensorInfo) -> List[int]:
    """The request tensor's dims after checking its dtype, and its dims against the signature's."""
    if len(proto.tensor_shape.dim) > MAX_RANK:
        raise _invalid(f"input '{key}' has {len(proto.tensor_shape.dim)} dims; at most {MAX_RANK} are accepted")
    if proto.dtype != expected.dtype:
        raise _invalid(f"input '{key}' must be {_dtype_name(expected.dtype)}, got {_dtype_name(proto.dtype)}")
    if proto.tensor_shape.unknown_rank:
        raise _invalid(f"input '{key}' has an unknown rank; give its dims")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise _invalid(f"input '{key}' has a negative dimension: {echoed(shape)}")
    dims = _dims(expected)
    if dims is not None and (len(shape) != len(dims) or any(size not in (-1, got) for size, got in zip(dims, shape))):
        expected_shape = "[" + ", ".join("N" if size == -1 else str(size) for size in dims) + "]"
        raise _invalid(f"input '{key}' must have shape {expected_shape}, got {echoed(shape)}")
    return shape


def _checked_payload(key: str, proto: tensor_pb2.TensorProto, shape: List[int], max_tensor_bytes: int) -> None:
    """Checks that the payload fits `shape` (tensor_content of exactly its bytes, or 1 value to fill it, or one
    value per element), that the tensor is at most `max_tensor_bytes` and that integers fit the dtype."""
    if proto.dtype not in VALUE_FIELDS:
        raise _invalid(f"input '{key}': dtype {_dtype_name(proto.dtype)} is not supported by this server")
    elements = int(np.prod(shape, dtype=object)) if shape else 1
    dtype = tf.dtypes.as_dtype(proto.dtype)
    if dtype != tf.string:
        item_bytes = dtype.size
        if elements * item_bytes > max_tensor_bytes:
            raise _invalid(
                f"input '{key}' of shape {shape} needs {elements * item_bytes} bytes, more than the server's "
                f"{max_tensor_bytes}-byte message limit"
            )
        if proto.tensor_content:
            if len(proto.tensor_content) != elements * item_bytes:
                raise _invalid(
                    f"input '{key}' is not a valid tensor: tensor_content has {len(proto.tensor_content)} bytes, "
                    f"shape {shape} of {_dtype_name(proto.dtype)} needs {elements * item_bytes}"
                )
            return
    values = getattr(proto, VALUE_FIELDS[proto.dtype])
    if len(values) not in (1, elements):
        raise _invalid(
            f"input '{key}' is not a valid tensor: {len(values)} values in {VALUE_FIELDS[proto.dtype]} for shape "
            f"{shape} ({elements} elements; give all of them or 1 to fill)"
        )
    if VALUE_FIELDS[proto.dtype] in ("int_val", "half_val") and len(values):
        limits = np.iinfo(np.uint16 if VALUE_FIELDS[proto.dtype] == "half_val" else dtype.as_numpy_dtype)
        low, high = min(values), max(values)
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise _invalid(
                f"input '{key}': value {bad} is out of range for {_dtype_name(proto.dtype)} "
                f"[{limits.min}, {limits.max}]"
            )


def checked_inputs(
    signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, tensor_pb2.TensorProto], max_batch_size: int,
    max_tensor_bytes: int,
) -> Dict[str, np.ndarray]:
    """The request's input tensors as numpy arrays, after checking keys, dtypes, shapes, batch size and payloads
    from the headers (see the module docstring); at most `max_tensor_bytes` per tensor."""
    missing = sorted(set(signature.inputs) - set(inputs))
    extra = sorted(set(inputs) - set(signature.inputs))
    if missing or extra:
        raise _invalid(
            f"inputs must be exactly {sorted(signature.inputs)}; missing {missing}, unexpected "
            f"{echoed(extra) if len(extra) <= 8 else f'{len(extra)} keys, first {echoed(extra[:3])}'}"
        )
    keys = sorted(signature.inputs)
    shapes = {key: _checked_header(key, inputs[key], signature.inputs[key]) for key in keys}
    batch_sizes = {shapes[key][0] for key in keys if (_dims(signature.inputs[key]) or [0])[0] == -1}
    if len(batch_sizes) > 1:
        raise _invalid(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    if batch_sizes:
        batch_size = batch_sizes.pop()
        if batch_size == 0:
            raise _invalid("empty batch: the first dimension of the inputs is 0")
        if batch_size > max_batch_size:
            raise _invalid(f"batch of {batch_size} is larger than the server's max_batch_size {max_batch_size}")
    for key in keys:
        _checked_payload(key, inputs[key], shapes[key], max_tensor_bytes)
    arrays = {}
    for key in keys:
        try:
            arrays[key] = tf.make_ndarray(inputs[key])
        except (ValueError, TypeError, OverflowError) as error:
            raise _invalid(f"input '{key}' is not a valid tensor: {error}") from None
    return arrays


def checked_output_filter(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> Sequence[str]:
    """The output keys to return: all of the signature's when the filter is empty, else the filter (each known)."""
    unknown = sorted(set(output_filter) - set(signature.outputs))
    if unknown:
        raise _invalid(f"output_filter names unknown output(s) {echoed(unknown)}; available: "
                       f"{sorted(signature.outputs)}")
    return list(output_filter) or sorted(signature.outputs)
