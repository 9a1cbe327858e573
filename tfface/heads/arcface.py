"""ArcFaceHead: additive angular margin s cos(theta_y + m), kept monotone past theta_y + m > pi (or insightface's
easy_margin)."""
import math

from keras import ops

from tfface.heads.angular import AngularMarginHead
from tfface.heads.base import check_non_negative, check_positive, safe_angle


def arcface_target_cosine(cosine_target, margin, easy_margin=False):
    """cos(theta + m) where it stays monotone, else a fallback; cosine_target: [N, 1] cos theta_y, margin m in radians.

    Default (insightface, easy_margin=False): cos(theta + m) where cos theta > cos(pi - m), else
    cos theta - m sin(pi - m). Past theta = pi - m, cos(theta + m) would rise again; the fallback (which steps down
    from -1 at theta = pi - m) keeps the target decreasing on all of [0, pi].
    easy_margin=True (insightface's option): cos(theta + m) where cos theta > 0, else cos theta itself (no margin for
    theta >= pi / 2).
    """
    if easy_margin:
        return ops.where(cosine_target > 0.0, ops.cos(safe_angle(cosine_target) + margin), cosine_target)
    threshold = math.cos(math.pi - margin)
    fallback_offset = math.sin(math.pi - margin) * margin
    return ops.where(
        cosine_target > threshold,
        ops.cos(safe_angle(cosine_target) + margin),
        cosine_target - fallback_offset,
    )


class ArcFaceHead(AngularMarginHead):
    """ArcFace (additive angular margin): target s cos(theta_y + m), others s cos theta_j. m in radians.

    easy_margin: insightface's option, the target keeps cos theta_y wherever cos theta_y <= 0 (default False: the
    fallback cos theta_y - m sin(pi - m) past theta_y = pi - m); see `arcface_target_cosine`.
    """

    def __init__(self, num_classes, scale=64.0, margin=0.5, easy_margin=False, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = check_positive("scale", scale)
        self.margin = check_non_negative("margin", margin)
        if self.margin >= math.pi:
            raise ValueError(f"margin must be below pi radians, got {margin!r}")
        if not isinstance(easy_margin, bool):
            raise ValueError(f"easy_margin must be true or false, got {easy_margin!r}")
        self.easy_margin = easy_margin

    def logit_scale(self, embeddings):
        return self.scale

    def target_cosine(self, cosine_target):
        return arcface_target_cosine(cosine_target, self.margin, self.easy_margin)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin, "easy_margin": self.easy_margin}
