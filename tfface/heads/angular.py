"""AngularMarginHead: the heads whose logits are scale * cos theta_j with a margin on the label column."""
from typing import Optional

from keras import ops

from tfface.heads.base import MarginHead, l2_normalize
from tfface.heads.margins import AngularMargin, margin_logits


class AngularMarginHead(MarginHead):
    """Logits scale * cos theta_j, cos theta_j = <x / ||x||, W_j / ||W_j||>, the label column replaced by a target
    (`tfface.heads.margins.margin_logits`).

    A stateless head passes `angular_margin`, its maths apart from W (tfface.heads.margins), which Partial FC uses
    too. A head with state (CurricularFace's t, SphereFace's annealing) passes none and overrides the hooks, all on
    float32 tensors:
    - `logit_scale(embeddings)`: the factor in front of cos, a number or a tensor broadcasting to [N, C];
    - `target_cosine(cosine_target)`: [N, 1] cos theta_y -> [N, 1] value that replaces cos theta_y;
    - `adjust_negatives(cosine, cosine_target, training)`: [N, C] cosines for the non-label columns (default as is).
    """

    def __init__(self, num_classes, angular_margin: Optional[AngularMargin] = None, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.angular_margin = angular_margin
        for option, value in (angular_margin.config() if angular_margin else {}).items():
            setattr(self, option, value)  # the margin's options read as the head's own: head.scale, head.margin

    def cosine(self, embeddings):
        """cos theta [N, C] between each embedding [N, D] and each class centre (columns of the kernel)."""
        return ops.matmul(l2_normalize(embeddings, axis=1), l2_normalize(self.kernel, axis=0))

    def logit_scale(self, embeddings):
        if self.angular_margin is None:
            raise NotImplementedError(f"{type(self).__name__} must implement logit_scale")
        return self.angular_margin.logit_scale(embeddings)

    def target_cosine(self, cosine_target):
        if self.angular_margin is None:
            raise NotImplementedError(f"{type(self).__name__} must implement target_cosine")
        return self.angular_margin.target_cosine(cosine_target)

    def adjust_negatives(self, cosine, cosine_target, training):
        return cosine

    def compute_logits(self, embeddings, labels, training):
        cosine = self.cosine(embeddings)
        scale = self.logit_scale(embeddings)
        if labels is None:
            plain_logits = scale * cosine
            return plain_logits, plain_logits
        is_target = ops.equal(labels[:, None], ops.arange(self.num_classes, dtype="int32")[None, :])
        return margin_logits(
            cosine, is_target, scale, self.target_cosine,
            lambda cosine, cosine_target: self.adjust_negatives(cosine, cosine_target, training),
        )

    def get_config(self):
        return {**super().get_config(), **(self.angular_margin.config() if self.angular_margin else {})}
