"""MarginHead: the layer contract shared by every margin head, plus the cosine/angle maths the heads share."""
import numbers

import keras
from keras import ops

COSINE_EPSILON = 1e-7
"""cos theta is clipped to [-1 + eps, 1 - eps] before acos, so acos and its gradient stay finite in float32."""

_SQUARED_NORM_FLOOR = 1e-12


def l2_norm(values, axis):
    """Euclidean norm along `axis` (kept as a size-1 axis); floored so the gradient at zero is finite."""
    return ops.sqrt(ops.maximum(ops.sum(ops.square(values), axis=axis, keepdims=True), _SQUARED_NORM_FLOOR))


def l2_normalize(values, axis):
    """`values` scaled to unit norm along `axis`; zero vectors stay (finite) zero. Multiplies by the reciprocal
    square root: the gradient of a broadcast division over a [512, classes] kernel took most of the head's time."""
    squared_norm = ops.sum(ops.square(values), axis=axis, keepdims=True)
    return values * ops.rsqrt(ops.maximum(squared_norm, _SQUARED_NORM_FLOOR))


def safe_angle(cosine):
    """theta = acos(cos theta) in radians, cos clipped to [-1 + eps, 1 - eps]: finite value and gradient at +-1."""
    return ops.arccos(ops.clip(cosine, -1.0 + COSINE_EPSILON, 1.0 - COSINE_EPSILON))


def check_positive(name, value):
    """`value` as a float, or a ValueError naming `name` when it is not a finite number > 0."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_non_negative(name, value):
    """`value` as a float, or a ValueError naming `name` when it is not a finite number >= 0."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


class MarginHead(keras.layers.Layer):
    """Owns the class-centre matrix W ("kernel", [D, C]) and maps embeddings [N, D] (+ labels [N]) to logits [N, C].

    `call(embeddings, labels=None, training=None)` returns {"logits", "plain_logits"}, both float32 [N, C]:
    "logits" carry the head's margin on the label column when labels are given (they equal the plain logits
    otherwise) and "plain_logits" never do. Embeddings of any float dtype are cast to float32 first and the layer
    neither autocasts nor keeps float16 weights, so margins are always computed in float32.
    `kernel_initializer` defaults to glorot normal; insightface's normal(0, 0.01) is
    `keras.initializers.RandomNormal(stddev=0.01)`.
    Subclasses implement `compute_logits(embeddings, labels, training) -> (logits, plain_logits)`.
    """

    def __init__(self, num_classes, kernel_initializer="glorot_normal", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(autocast=False, **kwargs)
        if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, embedding_shape):
        embedding_dim = embedding_shape[-1]
        if len(embedding_shape) != 2 or embedding_dim is None:
            raise ValueError(f"{self.name}: embeddings must have shape [N, D] with D known, got {embedding_shape}")
        self.kernel = self.add_weight(
            shape=(embedding_dim, self.num_classes),
            initializer=self.kernel_initializer,
            dtype="float32",
            name="kernel",
        )

    def call(self, embeddings, labels=None, training=None):
        embeddings = ops.cast(embeddings, "float32")
        if labels is not None:
            labels = self._checked_labels(labels)
        logits, plain_logits = self.compute_logits(embeddings, labels, bool(training))
        return {"logits": logits, "plain_logits": plain_logits}

    def compute_logits(self, embeddings, labels, training):
        """(logits, plain_logits), both [N, C] float32; labels are int32 [N] or None (then logits = plain)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_logits")

    def compute_output_spec(self, embeddings, labels=None, training=None):
        shape = (embeddings.shape[0], self.num_classes)
        return {key: keras.KerasTensor(shape, dtype="float32") for key in ("logits", "plain_logits")}

    def _checked_labels(self, labels):
        labels = ops.convert_to_tensor(labels)
        if len(labels.shape) != 1:
            raise ValueError(f"{self.name}: labels must be class ids of shape [N], got shape {tuple(labels.shape)}")
        if "int" not in str(labels.dtype):
            raise ValueError(f"{self.name}: labels must be integer class ids, got dtype {labels.dtype}")
        return ops.cast(labels, "int32")

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
