"""NormFaceHead: normalised softmax s cos theta_j (NormFace), or ||x|| cos theta_j (angular softmax); no margin."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.margins import NormFaceMargin


class NormFaceHead(AngularMarginHead):
    """Logits s cos theta_j with W and x normalised; `feature_scale=True` uses ||x|| [N, 1] in place of s.

    There is no margin, so labels change nothing (logits == plain_logits).
    """

    def __init__(self, num_classes, scale=30.0, feature_scale=False, **kwargs):
        super().__init__(num_classes, angular_margin=NormFaceMargin(scale, feature_scale), **kwargs)
