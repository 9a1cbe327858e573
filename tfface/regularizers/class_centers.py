"""Running class centres of the embeddings, shared by the center loss and the center invariant loss.

The centres are a non-trainable variable [C, D] (C = the head's class count, D = the embedding size), zero at
the start, moved after every optimizer step by the rule of Wen et al. 2016 (center loss, ECCV):

    c_j <- c_j - alpha * delta_c_j,   delta_c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),

with n_j the number of examples of class j in the GLOBAL batch. The per-class sums and counts are all-reduced across
replicas before the update, and the variable is created with aggregation="only_first_replica", so every replica
holds the same centres and a step on a global batch moves them exactly as one device does on the same batch.
"""
import numbers
from typing import Dict, Tuple

import keras
import tensorflow as tf

from tfface.training.plugins import Regularizer, StepContext


def all_reduce_sum(value: tf.Tensor) -> tf.Tensor:
    """Sum of `value` over the replicas (itself without a distribution strategy); call in replica context."""
    context = tf.distribute.get_replica_context()
    if context is None:
        raise RuntimeError("class statistics must be computed in replica context (inside strategy.run / train_step)")
    return context.all_reduce("sum", value)


def global_class_counts(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Examples per class [C] (float32) in the global batch; labels int [N] per replica."""
    labels = tf.cast(labels, tf.int32)
    return all_reduce_sum(tf.math.unsorted_segment_sum(tf.ones_like(labels, tf.float32), labels, num_classes))


def global_class_statistics(embeddings: tf.Tensor, labels: tf.Tensor, num_classes: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """(sums [C, D], counts [C]) of the embeddings per class over the global batch; embeddings [N, D] float32."""
    sums = tf.math.unsorted_segment_sum(embeddings, tf.cast(labels, tf.int32), num_classes)
    return all_reduce_sum(sums), global_class_counts(labels, num_classes)


def wen_center_update(centers: tf.Tensor, sums: tf.Tensor, counts: tf.Tensor, alpha: float) -> tf.Tensor:
    """New centres [C, D]: c_j - alpha * (n_j c_j - sum_{y_i = j} x_i) / (1 + n_j); classes absent stay put."""
    counts = counts[:, None]
    delta = (counts * centers - sums) / (1.0 + counts)
    return centers - alpha * delta


class RunningCentersRegularizer(Regularizer):
    """A regularizer that owns running class centres `centers` [C, D] of the "embedding" features.

    alpha: the centre learning rate of Wen et al. (0 < alpha <= 1; 0.5 in their paper).
    """

    def __init__(self, alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not 0 < alpha <= 1:
            raise ValueError(f"{self.name}: alpha (centre learning rate) must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def build_for(self, features_spec: Dict[str, tuple], head: keras.layers.Layer) -> None:
        if "embedding" not in features_spec or len(features_spec["embedding"]) != 1:
            raise ValueError(f"{self.name}: needs an 'embedding' feature of shape [D], got {features_spec}")
        self.num_classes = int(head.num_classes)
        self.centers = self.add_weight(
            shape=(self.num_classes, features_spec["embedding"][0]),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            aggregation="only_first_replica",
            name="centers",
        )
        self.built = True

    @staticmethod
    def embeddings_of(context: StepContext) -> tf.Tensor:
        """The step's embeddings as float32 [N, D]."""
        return tf.cast(context.features["embedding"], tf.float32)

    def after_update(self, context: StepContext) -> None:
        """Moves the centres by Wen's rule with the embeddings of this step's forward pass (global batch)."""
        embeddings = tf.stop_gradient(self.embeddings_of(context))
        sums, counts = global_class_statistics(embeddings, context.labels, self.num_classes)
        self.centers.assign(wen_center_update(tf.convert_to_tensor(self.centers), sums, counts, self.alpha))
