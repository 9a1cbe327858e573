"""ArcFaceHead: additive angular margin s cos(theta_y + m), kept monotone past theta_y + m > pi (or insightface's
easy_margin)."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.margins import ArcFaceMargin


class ArcFaceHead(AngularMarginHead):
    """ArcFace (additive angular margin): target s cos(theta_y + m), others s cos theta_j. m in radians.

    easy_margin: insightface's option, the target keeps cos theta_y wherever cos theta_y <= 0 (default False: the
    fallback cos theta_y - m sin(pi - m) past theta_y = pi - m); see `tfface.heads.margins.arcface_target_cosine`.
    """

    def __init__(self, num_classes, scale=64.0, margin=0.5, easy_margin=False, **kwargs):
        super().__init__(num_classes, angular_margin=ArcFaceMargin(scale, margin, easy_margin), **kwargs)
