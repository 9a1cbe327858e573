"""CosFaceHead: additive cosine margin s (cos theta_y - m) (CosFace / AM-Softmax)."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.base import check_non_negative, check_positive


class CosFaceHead(AngularMarginHead):
    """Target s (cos theta_y - m), others s cos theta_j; W and x normalised."""

    def __init__(self, num_classes, scale=64.0, margin=0.35, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = check_positive("scale", scale)
        self.margin = check_non_negative("margin", margin)

    def logit_scale(self, embeddings):
        return self.scale

    def target_cosine(self, cosine_target):
        return cosine_target - self.margin

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}
