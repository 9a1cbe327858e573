"""CosFaceHead: additive cosine margin s (cos theta_y - m) (CosFace / AM-Softmax)."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.margins import CosFaceMargin


class CosFaceHead(AngularMarginHead):
    """Target s (cos theta_y - m), others s cos theta_j; W and x normalised."""

    def __init__(self, num_classes, scale=64.0, margin=0.35, **kwargs):
        super().__init__(num_classes, angular_margin=CosFaceMargin(scale, margin), **kwargs)
