"""CurricularFaceHead: ArcFace target plus hard negatives re-weighted by an adaptive curriculum t."""
import math

import tensorflow as tf
from keras import ops

from tfface.heads.angular import AngularMarginHead
from tfface.heads.base import check_non_negative, check_positive, safe_angle
from tfface.heads.margins import arcface_target_cosine


def global_batch_mean(values):
    """Mean of all entries of `values` over the global batch: summed over replicas when several are in sync."""
    total_and_count = ops.stack([ops.sum(values), ops.cast(tf.size(values), "float32")])
    replica_context = tf.distribute.get_replica_context()
    if replica_context is not None and replica_context.num_replicas_in_sync > 1:
        total_and_count = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, total_and_count)
    return total_and_count[0] / total_and_count[1]


class CurricularFaceHead(AngularMarginHead):
    """Target s cos(theta_y + m) with ArcFace's fallback; a negative with cos theta_j > cos(theta_y + m) becomes
    s cos theta_j (t + cos theta_j), any other s cos theta_j.

    t (non-trainable float32, starts at 0) follows t <- (1 - momentum) t + momentum mean(cos theta_y) on training
    calls with labels, the mean over the global batch, before the negatives are re-weighted. `momentum` is the
    weight of the new batch mean: the default 0.01 is the CurricularFace authors' code
    (`t = target_logit.mean() * 0.01 + (1 - 0.01) * t`); their paper's text, t = alpha r + (1 - alpha) t with
    "alpha ... set to 0.99", is `momentum: 0.99` (PAPER_TEXT_ALPHA). A frozen head (`trainable` False, as
    FaceTrainer's `freeze: [head]`, e.g. 3D-BERL's auxiliary stage) keeps t fixed, like a frozen batch norm.
    """

    PAPER_TEXT_ALPHA = 0.99

    def __init__(self, num_classes, scale=64.0, margin=0.5, momentum=0.01, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = check_positive("scale", scale)
        self.margin = check_non_negative("margin", margin)
        if self.margin >= math.pi:
            raise ValueError(f"margin must be below pi radians, got {margin!r}")
        self.momentum = check_non_negative("momentum", momentum)
        if self.momentum > 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")

    def build(self, embedding_shape):
        super().build(embedding_shape)
        self.t = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            aggregation="only_first_replica",
            name="t",
        )

    def logit_scale(self, embeddings):
        return self.scale

    def target_cosine(self, cosine_target):
        return arcface_target_cosine(cosine_target, self.margin)

    def adjust_negatives(self, cosine, cosine_target, training):
        if training and self.trainable:
            batch_mean = global_batch_mean(ops.stop_gradient(ops.clip(cosine_target, -1.0, 1.0)))
            self.t.assign((1.0 - self.momentum) * self.t + self.momentum * batch_mean)
        is_hard = cosine > ops.cos(safe_angle(cosine_target) + self.margin)
        return ops.where(is_hard, cosine * (self.t + cosine), cosine)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin, "momentum": self.momentum}
