"""LinearFaceHead: the linear angular target s (-a theta_y + b) of LATSE / LinearFace (paper 001, Eq. 10)."""
from tfface.heads.angular import AngularMarginHead
from tfface.heads.base import check_positive, safe_angle


class LinearFaceHead(AngularMarginHead):
    """Target s (-a theta_y + b) with theta_y in radians, others s cos theta_j; W and x normalised.

    The target decreases linearly in theta_y (slope a > 0); with a = b = 0.88 (the paper's Table 1 setting) it lies
    below cos theta_y everywhere on [0, pi], as the paper's principle chi <= phi asks.
    """

    def __init__(self, num_classes, scale=64.0, a=0.88, b=0.88, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = check_positive("scale", scale)
        self.a = check_positive("a", a)
        self.b = check_positive("b", b)

    def logit_scale(self, embeddings):
        return self.scale

    def target_cosine(self, cosine_target):
        return -self.a * safe_angle(cosine_target) + self.b

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "a": self.a, "b": self.b}
