"""CombinedMarginHead: insightface's combined margin s (cos(m1 theta_y + m2) - m3)."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.margins import CombinedMargin


class CombinedMarginHead(AngularMarginHead):
    """Target s (cos(m1 theta_y + m2) - m3), others s cos theta_j; theta in radians (see CombinedMargin)."""

    def __init__(self, num_classes, scale=64.0, m1=1.0, m2=0.3, m3=0.2, **kwargs):
        super().__init__(num_classes, angular_margin=CombinedMargin(scale, m1, m2, m3), **kwargs)
