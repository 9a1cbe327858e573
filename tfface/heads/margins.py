"""The margins of the stateless angular heads, apart from the class centres W (as arcface_torch's
CombinedMarginLoss): pure maths on cosines and label columns, shared by the full heads and Partial FC.

    margin = MARGINS.build("arcface", scale=64.0, margin=0.5)
    logits, plain = margin_logits(cosine, is_target, margin.logit_scale(embeddings), margin.target_cosine)
"""
import math
from typing import Callable, Dict, Optional

from keras import ops

from tfface.heads.base import check_non_negative, check_positive, l2_norm, safe_angle
from tfface.registry import Registry


def margin_logits(cosine, is_target, scale, target_cosine: Callable, adjust_negatives: Optional[Callable] = None):
    """(margin logits, plain logits), both [N, C] float32: scale * cos theta_j, the label column's cos theta_y
    replaced by target_cosine(cos theta_y) in the margin logits.

    cosine: [N, C] float32; is_target: [N, C] bool, True at the label's column (a row may have none: Partial FC's
    sampled columns); scale: a number or a tensor broadcasting to [N, C]; target_cosine: [N, 1] -> [N, 1];
    adjust_negatives(cosine, cosine_target) -> [N, C] cosines for the other columns (default: as they are).
    """
    cosine_target = ops.sum(ops.where(is_target, cosine, 0.0), axis=1, keepdims=True)
    negatives = cosine if adjust_negatives is None else adjust_negatives(cosine, cosine_target)
    return scale * ops.where(is_target, target_cosine(cosine_target), negatives), scale * cosine


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


class AngularMargin:
    """A fixed scale s and a target for cos theta_y; no variables. `config()` gives the constructor's options."""

    def __init__(self, scale):
        self.scale = check_positive("scale", scale)

    def logit_scale(self, embeddings):
        """The factor in front of cos theta: a number or a tensor broadcasting to [N, C]."""
        return self.scale

    def target_cosine(self, cosine_target):
        """[N, 1] cos theta_y -> [N, 1] value that replaces it."""
        raise NotImplementedError(f"{type(self).__name__} must implement target_cosine")

    def config(self) -> Dict:
        return {"scale": self.scale}


class ArcFaceMargin(AngularMargin):
    """ArcFace: target cos(theta_y + m), m in radians, with insightface's monotone fallback (or its easy_margin)."""

    def __init__(self, scale=64.0, margin=0.5, easy_margin=False):
        super().__init__(scale)
        self.margin = check_non_negative("margin", margin)
        if self.margin >= math.pi:
            raise ValueError(f"margin must be below pi radians, got {margin!r}")
        if not isinstance(easy_margin, bool):
            raise ValueError(f"easy_margin must be true or false, got {easy_margin!r}")
        self.easy_margin = easy_margin

    def target_cosine(self, cosine_target):
        return arcface_target_cosine(cosine_target, self.margin, self.easy_margin)

    def config(self) -> Dict:
        return {**super().config(), "margin": self.margin, "easy_margin": self.easy_margin}


class CosFaceMargin(AngularMargin):
    """CosFace / AM-Softmax: target cos theta_y - m."""

    def __init__(self, scale=64.0, margin=0.35):
        super().__init__(scale)
        self.margin = check_non_negative("margin", margin)

    def target_cosine(self, cosine_target):
        return cosine_target - self.margin

    def config(self) -> Dict:
        return {**super().config(), "margin": self.margin}


class CombinedMargin(AngularMargin):
    """insightface's combined margin: target cos(m1 theta_y + m2) - m3, theta in radians.

    m1 = 1, m2 = m, m3 = 0 is ArcFace without its fallback; m1 = 1, m2 = 0, m3 = m is CosFace; m1 = m is the
    multiplicative angular margin without SphereFace's psi. As in insightface, no monotone fallback is applied:
    past m1 theta + m2 > pi the target rises again.
    """

    def __init__(self, scale=64.0, m1=1.0, m2=0.3, m3=0.2):
        super().__init__(scale)
        self.m1 = check_positive("m1", m1)
        self.m2 = check_non_negative("m2", m2)
        self.m3 = check_non_negative("m3", m3)

    def target_cosine(self, cosine_target):
        return ops.cos(self.m1 * safe_angle(cosine_target) + self.m2) - self.m3

    def config(self) -> Dict:
        return {**super().config(), "m1": self.m1, "m2": self.m2, "m3": self.m3}


class NormFaceMargin(AngularMargin):
    """No margin: s cos theta_j (NormFace), or ||x|| cos theta_j with `feature_scale=True` (angular softmax)."""

    def __init__(self, scale=30.0, feature_scale=False):
        super().__init__(scale)
        if not isinstance(feature_scale, bool):
            raise ValueError(f"feature_scale must be True or False, got {feature_scale!r}")
        self.feature_scale = feature_scale

    def logit_scale(self, embeddings):
        return l2_norm(embeddings, axis=1) if self.feature_scale else self.scale

    def target_cosine(self, cosine_target):
        return cosine_target

    def config(self) -> Dict:
        return {**super().config(), "feature_scale": self.feature_scale}


class LinearFaceMargin(AngularMargin):
    """LinearFace (paper 001, Eq. 10): target -a theta_y + b, theta in radians.

    The target decreases linearly in theta_y (slope a > 0); with a = b = 0.88 (the paper's Table 1 setting) it lies
    below cos theta_y everywhere on [0, pi], as the paper's principle chi <= phi asks.
    """

    def __init__(self, scale=64.0, a=0.88, b=0.88):
        super().__init__(scale)
        self.a = check_positive("a", a)
        self.b = check_positive("b", b)

    def target_cosine(self, cosine_target):
        return -self.a * safe_angle(cosine_target) + self.b

    def config(self) -> Dict:
        return {**super().config(), "a": self.a, "b": self.b}


MARGINS = Registry("margin")
MARGINS.register("arcface")(ArcFaceMargin)
MARGINS.register("cosface")(CosFaceMargin)
MARGINS.register("combined")(CombinedMargin)
MARGINS.register("normface")(NormFaceMargin)
MARGINS.register("linearface")(LinearFaceMargin)
