"""SoftmaxHead: the plain fully connected classifier W^T x + b (no margin)."""
import keras
from keras import ops

from tfface.heads.base import MarginHead


class SoftmaxHead(MarginHead):
    """Logits x W + b, [N, C]; labels change nothing (logits == plain_logits). Owns `kernel` [D, C] and `bias` [C]."""

    def __init__(self, num_classes, bias_initializer="zeros", **kwargs):
        super().__init__(num_classes, **kwargs)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, embedding_shape):
        super().build(embedding_shape)
        self.bias = self.add_weight(
            shape=(self.num_classes,), initializer=self.bias_initializer, dtype="float32", name="bias"
        )

    def compute_logits(self, embeddings, labels, training):
        logits = ops.matmul(embeddings, self.kernel) + self.bias
        return logits, logits

    def get_config(self):
        return {**super().get_config(), "bias_initializer": keras.initializers.serialize(self.bias_initializer)}
