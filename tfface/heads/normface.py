"""NormFaceHead: normalised softmax s cos theta_j (NormFace), or ||x|| cos theta_j (angular softmax); no margin."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.base import check_positive, l2_norm


class NormFaceHead(AngularMarginHead):
    """Logits s cos theta_j with W and x normalised; `feature_scale=True` uses ||x|| [N, 1] in place of s.

    There is no margin, so labels change nothing (logits == plain_logits).
    """

    def __init__(self, num_classes, scale=30.0, feature_scale=False, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = check_positive("scale", scale)
        if not isinstance(feature_scale, bool):
            raise ValueError(f"feature_scale must be True or False, got {feature_scale!r}")
        self.feature_scale = feature_scale

    def logit_scale(self, embeddings):
        return l2_norm(embeddings, axis=1) if self.feature_scale else self.scale

    def target_cosine(self, cosine_target):
        return cosine_target

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "feature_scale": self.feature_scale}
