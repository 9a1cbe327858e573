"""Weights of an ONNX face-embedding network (a PyTorch export) in a tfface backbone.

The ONNX graph is matched to the Keras backbone by data flow, not by names: starting at the image input, each Keras
layer (in the functional model's order) is paired with the ONNX node that consumes the tensor its input was paired
with (Conv, BatchNormalization, PRelu, Add, Gemm/MatMul, Flatten/Reshape), and its attributes and weight shapes must
agree. The first node that does not fit stops the import with one line naming it (`OnnxImportError`).

Batch norm folded into a Conv (the PyTorch exporter's eval-mode default) is unfolded into the Keras conv + BN pair
without changing the function: for a conv output z (without bias) and folded bias b, the BN gets the statistics of z
over calibration faces (mean mu, variance v) and gamma = sqrt(v + eps), beta = mu + b, so that
gamma (z - mu) / sqrt(v + eps) + beta = z + b exactly in inference, while in training (batch statistics ~ mu, v) the
network computes nearly the same function, so fine-tuning starts from the pretrained network rather than from
batch-normalised conv outputs. A BN without gamma (IResNet's last `features` BN) gets mu = 0, v = 1 - eps, beta = b.

Layouts: ONNX is NCHW with Conv weights [O, I/groups, kh, kw], Gemm weights [out, in] (transB=1); Keras is NHWC with
kernels [kh, kw, I/groups, O] (DepthwiseConv2D [kh, kw, C, 1]) and Dense [in, out]. A Flatten of an h x w x c map
permutes the next Dense's rows from PyTorch's (c, h, w) order to Keras' (h, w, c) order.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np

PASS_THROUGH_OPS = ("Reshape", "Flatten", "Identity", "Dropout")
IGNORED_OPS = ("Constant",)


class OnnxImportError(ValueError):
    """The ONNX graph does not fit the backbone; the message names the first node that does not fit."""


@dataclass
class _Graph:
    """An ONNX graph as the matcher needs it: nodes, constant tensors, the consumers of each tensor."""

    nodes: list
    constants: Dict[str, np.ndarray]
    consumers: Dict[str, list]
    input_name: str
    output_name: str

    @classmethod
    def read(cls, model) -> "_Graph":
        from onnx import numpy_helper

        graph = model.graph
        constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        inputs = [value.name for value in graph.input if value.name not in constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise OnnxImportError(f"the graph must have one image input and one output, got inputs {inputs} and "
                                  f"{len(graph.output)} outputs")
        consumers: Dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        return cls(list(graph.node), constants, consumers, inputs[0], graph.output[0].name)


def _attributes(node) -> Dict:
    from onnx import helper

    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def _describe(node) -> str:
    return f"node '{node.name or node.output[0]}' ({node.op_type})"


@dataclass
class _Mapped:
    """The ONNX tensor a Keras tensor equals; `bias` a folded conv/Gemm bias still to be added (by the next BN),
    `padding` explicit ZeroPadding2D (top, left, bottom, right) not yet consumed, `flattened` the (h, w, c) of a
    Flatten whose rows the next Dense must permute."""

    name: str
    bias: Optional[np.ndarray] = None
    padding: Tuple[int, int, int, int] = (0, 0, 0, 0)
    flattened: Optional[Tuple[int, int, int]] = None


@dataclass
class ImportResult:
    """What the import did: layers set, BNs unfolded (to calibrate), ONNX nodes used."""

    layers: int = 0
    unfolded: List[Tuple[keras.layers.BatchNormalization, np.ndarray]] = field(default_factory=list)
    used_nodes: int = 0


class _Matcher:
    def __init__(self, graph: _Graph):
        self.graph = graph
        self.used = set()
        self.result = ImportResult()

    def consumer(self, mapped: _Mapped, ops: Tuple[str, ...], layer, fits=lambda node: True):
        """The first unused consumer of `mapped` whose op is in `ops` and that `fits`; else OnnxImportError."""
        candidates = [node for node in self.graph.consumers.get(mapped.name, []) if id(node) not in self.used]
        for node in candidates:
            if node.op_type in ops and fits(node):
                self.used.add(id(node))
                return node
        unfit = candidates[0] if candidates else None
        where = _describe(unfit) if unfit is not None else f"tensor '{mapped.name}' (no unused consumer)"
        raise OnnxImportError(f"{where} does not fit backbone layer '{layer.name}' ({type(layer).__name__}, "
                              f"needs {'/'.join(ops)})")

    def weight(self, node, index: int) -> Optional[np.ndarray]:
        if len(node.input) <= index or not node.input[index]:
            return None
        if node.input[index] not in self.graph.constants:
            raise OnnxImportError(f"{_describe(node)}: input {index} is not a constant weight")
        return self.graph.constants[node.input[index]].astype(np.float32)

    # --- one method per Keras layer type; each returns the mapping of the layer's output -------------------------

    def zero_padding(self, layer, mapped: _Mapped) -> _Mapped:
        (top, bottom), (left, right) = layer.padding
        padding = np.add(mapped.padding, (top, left, bottom, right))
        return _Mapped(mapped.name, mapped.bias, tuple(int(value) for value in padding))

    def conv(self, layer, mapped: _Mapped) -> _Mapped:
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        kernel = layer.kernel.shape
        channels_in = kernel[2]
        groups = channels_in if depthwise else layer.groups
        filters = channels_in * kernel[3] if depthwise else kernel[3]
        keras_pads = tuple(np.add(mapped.padding, _same_padding(layer)))

        def fits(node) -> bool:
            attributes = _attributes(node)
            weight = self.graph.constants.get(node.input[1])
            return (
                weight is not None
                and tuple(weight.shape) == (filters, 1 if depthwise else kernel[2], kernel[0], kernel[1])
                and attributes.get("group", 1) == groups
                and tuple(attributes.get("strides", (1, 1))) == tuple(layer.strides)
                and tuple(attributes.get("dilations", (1, 1))) == tuple(layer.dilation_rate)
                and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
                and _onnx_pads(attributes) == keras_pads
            )

        node = self.consumer(mapped, ("Conv",), layer, fits)
        weight = self.weight(node, 1)
        if depthwise:  # [C * mult, 1, kh, kw] -> [kh, kw, C, mult]
            value = weight.reshape(channels_in, kernel[3], kernel[0], kernel[1]).transpose(2, 3, 0, 1)
        else:  # [O, I / groups, kh, kw] -> [kh, kw, I / groups, O]
            value = weight.transpose(2, 3, 1, 0)
        bias = self.weight(node, 2)
        self.set(layer, [value] + ([_or_zeros(bias, filters)] if layer.use_bias else []))
        return _Mapped(node.output[0], None if layer.use_bias else bias)

    def dense(self, layer, mapped: _Mapped) -> _Mapped:
        units_in, units = layer.kernel.shape

        def fits(node) -> bool:
            weight = self.graph.constants.get(node.input[1])
            if weight is None:
                return False
            if node.op_type == "Gemm":
                attributes = _attributes(node)
                shape = (units, units_in) if attributes.get("transB", 0) else (units_in, units)
                return tuple(weight.shape) == shape and attributes.get("transA", 0) == 0
            if node.op_type == "MatMul":
                return tuple(weight.shape) == (units_in, units)
            return tuple(weight.shape) == (units, units_in, 1, 1)  # a 1x1 Conv on a 1x1 map

        node = self.consumer(mapped, ("Gemm", "MatMul", "Conv"), layer, fits)
        weight = self.weight(node, 1)
        if node.op_type == "Gemm":
            attributes = _attributes(node)
            if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
                raise OnnxImportError(f"{_describe(node)}: alpha and beta must be 1")
            kernel = weight.T if attributes.get("transB", 0) else weight
            bias = self.weight(node, 2)
        elif node.op_type == "Conv":
            kernel, bias = weight[:, :, 0, 0].T, self.weight(node, 2)
        else:
            kernel, bias = weight, None
        if mapped.flattened is not None:  # rows in PyTorch's (c, h, w) order -> Keras' (h, w, c) order
            height, width, channels = mapped.flattened
            kernel = kernel.reshape(channels, height, width, units).transpose(1, 2, 0, 3).reshape(units_in, units)
        output = node.output[0]
        if node.op_type == "MatMul":  # PyTorch exports Linear without Gemm as MatMul + Add(bias)
            bias_node = next((candidate for candidate in self.graph.consumers.get(output, [])
                              if candidate.op_type == "Add" and any(name in self.graph.constants
                                                                    for name in candidate.input)), None)
            if bias_node is not None:
                self.used.add(id(bias_node))
                bias = next(self.graph.constants[name] for name in bias_node.input if name in self.graph.constants)
                output = bias_node.output[0]
        self.set(layer, [kernel] + ([_or_zeros(bias, units)] if layer.use_bias else []))
        return _Mapped(output, None if layer.use_bias else bias)

    def batch_norm(self, layer, mapped: _Mapped) -> _Mapped:
        channels = layer.moving_mean.shape[0]
        candidates = [node for node in self.graph.consumers.get(mapped.name, [])
                      if id(node) not in self.used and node.op_type == "BatchNormalization"]
        if not candidates:  # folded into the producer: unfold (see the module docstring)
            bias = _or_zeros(mapped.bias, channels)
            if layer.scale:
                self.result.unfolded.append((layer, bias))
            identity_variance = np.full(channels, 1 - layer.epsilon)
            self.set_batch_norm(layer, np.ones(channels), bias, np.zeros(channels), identity_variance)
            return _Mapped(mapped.name)
        node = candidates[0]
        self.used.add(id(node))
        scale, beta, mean, variance = (self.weight(node, index) for index in range(1, 5))
        if scale.shape != (channels,):
            raise OnnxImportError(f"{_describe(node)}: {scale.shape[0]} channels, backbone layer '{layer.name}' "
                                  f"has {channels}")
        if not layer.scale and not np.allclose(scale, 1.0):
            raise OnnxImportError(f"{_describe(node)}: scale is not 1 but backbone layer '{layer.name}' has none")
        epsilon = float(_attributes(node).get("epsilon", 1e-5))
        if mapped.bias is not None:  # a bias before BN shifts the mean it subtracts
            mean = mean - mapped.bias
        self.set_batch_norm(layer, scale, beta, mean, variance + epsilon - layer.epsilon)
        return _Mapped(node.output[0])

    def prelu(self, layer, mapped: _Mapped) -> _Mapped:
        alpha_shape = tuple(layer.alpha.shape)
        node = self.consumer(mapped, ("PRelu",), layer,
                             lambda node: self.graph.constants.get(node.input[1]) is not None
                             and self.graph.constants[node.input[1]].size in (1, alpha_shape[-1]))
        slope = self.weight(node, 1).reshape(-1)
        self.set(layer, [np.broadcast_to(slope, alpha_shape[-1:]).reshape(alpha_shape)])
        return _Mapped(node.output[0])

    def add(self, layer, inputs: List[_Mapped]) -> _Mapped:
        names = {mapped.name for mapped in inputs}
        node = self.consumer(inputs[0], ("Add",), layer, lambda node: set(node.input) == names)
        return _Mapped(node.output[0])

    def flatten(self, layer, mapped: _Mapped, input_shape) -> _Mapped:
        spatial = tuple(input_shape[1:])
        if len(spatial) == 3 and spatial[:2] != (1, 1):
            node = self.consumer(mapped, ("Flatten", "Reshape"), layer)
            return _Mapped(node.output[0], flattened=spatial)
        return mapped  # a 1x1 map flattens to the same values in either layout; the ONNX graph may reshape later

    # --- weights --------------------------------------------------------------------------------------------------

    def set(self, layer, values: List[np.ndarray]) -> None:
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [tuple(np.shape(value)) for value in values] != expected:
            raise OnnxImportError(f"backbone layer '{layer.name}': weights {[np.shape(v) for v in values]} from the "
                                  f"graph, expected {expected}")
        layer.set_weights([np.asarray(value, np.float32) for value in values])
        self.result.layers += 1

    def set_batch_norm(self, layer, gamma, beta, mean, variance) -> None:
        values = ([gamma] if layer.scale else []) + ([beta] if layer.center else []) + [mean, variance]
        self.set(layer, values)


def _same_padding(layer) -> Tuple[int, int, int, int]:
    """(top, left, bottom, right) of a Keras conv's own padding; "same" only at stride 1 with odd kernels."""
    if layer.padding == "valid":
        return (0, 0, 0, 0)
    height, width = layer.kernel_size
    if max(layer.strides) != 1 or height % 2 == 0 or width % 2 == 0:
        raise OnnxImportError(f"backbone layer '{layer.name}': 'same' padding at stride {layer.strides} has no "
                              f"PyTorch equivalent")
    return (height // 2, width // 2, height // 2, width // 2)


def _onnx_pads(attributes) -> Tuple[int, int, int, int]:
    pads = tuple(attributes.get("pads", (0, 0, 0, 0)))
    return tuple(int(value) for value in pads)


def _or_zeros(bias: Optional[np.ndarray], size: int) -> np.ndarray:
    return np.zeros(size, np.float32) if bias is None else bias


def _map_backbone(graph: _Graph, backbone: keras.Model) -> ImportResult:
    """Sets every weight of `backbone` from `graph` (BNs to unfold left at their exact identity form)."""
    matcher = _Matcher(graph)
    mapping: Dict[int, _Mapped] = {}
    for layer in backbone.layers:
        node = layer._inbound_nodes[0]
        if isinstance(layer, keras.layers.InputLayer):
            mapping[id(node.output_tensors[0])] = _Mapped(graph.input_name)
            continue
        inputs = [mapping[id(tensor)] for tensor in node.input_tensors]
        if isinstance(layer, keras.layers.ZeroPadding2D):
            output = matcher.zero_padding(layer, inputs[0])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            output = matcher.conv(layer, inputs[0])
        elif isinstance(layer, keras.layers.Dense):
            output = matcher.dense(layer, inputs[0])
        elif isinstance(layer, keras.layers.BatchNormalization):
            output = matcher.batch_norm(layer, inputs[0])
        elif isinstance(layer, keras.layers.PReLU):
            output = matcher.prelu(layer, inputs[0])
        elif isinstance(layer, keras.layers.Add):
            output = matcher.add(layer, inputs)
        elif isinstance(layer, keras.layers.Flatten):
            output = matcher.flatten(layer, inputs[0], node.input_tensors[0].shape)
        elif isinstance(layer, keras.layers.Dropout):
            output = inputs[0]
        else:
            raise OnnxImportError(f"backbone layer '{layer.name}' ({type(layer).__name__}) has no ONNX import")
        if output.padding != (0, 0, 0, 0) and not isinstance(layer, keras.layers.ZeroPadding2D):
            raise OnnxImportError(f"backbone layer '{layer.name}': explicit padding left unused")
        mapping[id(node.output_tensors[0])] = output
    embedding = mapping[id(backbone.output["embedding"])]
    _check_tail(graph, matcher.used, embedding)
    matcher.result.used_nodes = len(matcher.used)
    return matcher.result


def _check_tail(graph: _Graph, used: set, embedding: _Mapped) -> None:
    """Only reshapes may follow the embedding to the graph output, and every other node must have been used."""
    name = embedding.name
    while name != graph.output_name:
        following = [node for node in graph.consumers.get(name, []) if node.op_type in PASS_THROUGH_OPS]
        if not following:
            raise OnnxImportError(f"tensor '{name}' (the backbone's embedding) does not lead to the graph output "
                                  f"'{graph.output_name}' through reshapes only")
        used.add(id(following[0]))
        name = following[0].output[0]
    for node in graph.nodes:
        if id(node) not in used and node.op_type not in IGNORED_OPS:
            raise OnnxImportError(f"{_describe(node)} has no counterpart in the backbone")


def _calibrate(backbone: keras.Model, unfolded, images: np.ndarray, batch_size: int = 32) -> None:
    """Gives each unfolded BN the statistics of its input over `images` (normalised NHWC), keeping its function."""
    if not unfolded:
        return
    probe = keras.Model(backbone.input, [layer.input for layer, _ in unfolded])
    sums = [0.0] * len(unfolded)
    squares = [0.0] * len(unfolded)
    counts = [0] * len(unfolded)  # values per channel: images x positions of that layer's map
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start : start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for index, output in enumerate(outputs):
            values = np.asarray(output, np.float64).reshape(-1, output.shape[-1])
            sums[index] = sums[index] + values.sum(axis=0)
            squares[index] = squares[index] + (values**2).sum(axis=0)
            counts[index] += len(values)
    for (layer, bias), total, total_squares, count in zip(unfolded, sums, squares, counts):
        mean = total / count
        variance = np.maximum(total_squares / count - mean**2, 0.0)
        gamma = np.sqrt(variance + layer.epsilon)
        layer.set_weights([np.asarray(value, np.float32) for value in (gamma, mean + bias, mean, variance)])


def import_onnx(onnx_path, backbone: keras.Model, calibration_images: np.ndarray) -> ImportResult:
    """Sets `backbone`'s weights from the ONNX file so that it computes the same embedding.

    calibration_images: float32 [N, H, W, 3] normalised faces ((pixel - 127.5) / 128) for unfolding folded BNs.
    Raises OnnxImportError (one line, naming the first node that does not fit) or ValueError for an unreadable file.
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path))
    except Exception as error:  # onnx raises DecodeError, OSError, ... for a file that is not a model
        raise OnnxImportError(f"{onnx_path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    result = _map_backbone(_Graph.read(model), backbone)
    _calibrate(backbone, result.unfolded, calibration_images)
    return result


def onnx_embeddings(onnx_path, images: np.ndarray) -> np.ndarray:
    """onnxruntime's output for normalised NHWC float32 `images` [N, H, W, 3]: float32 [N, D], one image a run
    (exported face networks often fix the batch at 1)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rows = [session.run(None, {input_name: image.transpose(2, 0, 1)[None].astype(np.float32)})[0].reshape(-1)
            for image in images]
    return np.stack(rows)


def max_normalised_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a/||a|| - b/||b||| over rows and components of two [N, D] embedding matrices."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.max(np.abs(a - b)))
