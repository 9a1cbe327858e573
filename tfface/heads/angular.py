"""AngularMarginHead: the heads whose logits are scale * cos theta_j with a margin on the label column."""
from keras import ops

from tfface.heads.base import MarginHead, l2_normalize


class AngularMarginHead(MarginHead):
    """Logits scale * cos theta_j, cos theta_j = <x / ||x||, W_j / ||W_j||>, the label column replaced by a target.

    Subclasses set the hooks, all on float32 tensors:
    - `logit_scale(embeddings)`: the factor in front of cos, a number or a tensor broadcasting to [N, C];
    - `target_cosine(cosine_target)`: [N, 1] cos theta_y -> [N, 1] value that replaces cos theta_y;
    - `adjust_negatives(cosine, cosine_target, training)`: [N, C] cosines for the non-label columns (default as is).
    """

    def cosine(self, embeddings):
        """cos theta [N, C] between each embedding [N, D] and each class centre (columns of the kernel)."""
        return ops.matmul(l2_normalize(embeddings, axis=1), l2_normalize(self.kernel, axis=0))

    def logit_scale(self, embeddings):
        raise NotImplementedError(f"{type(self).__name__} must implement logit_scale")

    def target_cosine(self, cosine_target):
        raise NotImplementedError(f"{type(self).__name__} must implement target_cosine")

    def adjust_negatives(self, cosine, cosine_target, training):
        return cosine

    def compute_logits(self, embeddings, labels, training):
        cosine = self.cosine(embeddings)
        scale = self.logit_scale(embeddings)
        plain_logits = scale * cosine
        if labels is None:
            return plain_logits, plain_logits
        is_target = ops.equal(labels[:, None], ops.arange(self.num_classes, dtype="int32")[None, :])
        cosine_target = ops.take_along_axis(cosine, labels[:, None], axis=1)
        margin_cosine = ops.where(
            is_target,
            self.target_cosine(cosine_target),
            self.adjust_negatives(cosine, cosine_target, training),
        )
        return scale * margin_cosine, plain_logits
