"""LinearFaceHead: the linear angular target s (-a theta_y + b) of LATSE / LinearFace (paper 001, Eq. 10)."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.margins import LinearFaceMargin


class LinearFaceHead(AngularMarginHead):
    """Target s (-a theta_y + b) with theta_y in radians, others s cos theta_j; W and x normalised (see
    LinearFaceMargin)."""

    def __init__(self, num_classes, scale=64.0, a=0.88, b=0.88, **kwargs):
        super().__init__(num_classes, angular_margin=LinearFaceMargin(scale, a, b), **kwargs)
