"""CombinedMarginHead: insightface's combined margin s (cos(m1 theta_y + m2) - m3)."""
from keras import ops

from tfface.heads.angular import AngularMarginHead
from tfface.heads.base import check_non_negative, check_positive, safe_angle


class CombinedMarginHead(AngularMarginHead):
    """Target s (cos(m1 theta_y + m2) - m3), others s cos theta_j; theta in radians.

    m1 = 1, m2 = m, m3 = 0 is ArcFace without its fallback; m1 = 1, m2 = 0, m3 = m is CosFace; m1 = m is the
    multiplicative angular margin without SphereFace's psi. As in insightface, no monotone fallback is applied:
    past m1 theta + m2 > pi the target rises again.
    """

    def __init__(self, num_classes, scale=64.0, m1=1.0, m2=0.3, m3=0.2, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = check_positive("scale", scale)
        self.m1 = check_positive("m1", m1)
        self.m2 = check_non_negative("m2", m2)
        self.m3 = check_non_negative("m3", m3)

    def logit_scale(self, embeddings):
        return self.scale

    def target_cosine(self, cosine_target):
        return ops.cos(self.m1 * safe_angle(cosine_target) + self.m2) - self.m3

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "m1": self.m1, "m2": self.m2, "m3": self.m3}
