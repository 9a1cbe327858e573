"""SphereFaceHead (A-Softmax): multiplicative angular margin psi(theta_y) with SphereFace's annealed blend.

Also the two pieces L-Softmax shares: `sphereface_psi` and `annealed_lambda`.
"""
import math
import numbers

from keras import ops

from tfface.heads.angular import AngularMarginHead
from tfface.heads.base import check_non_negative, l2_norm, safe_angle


def sphereface_psi(theta, margin):
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m], k = 0 .. m-1; theta in radians.

    Continuous and decreasing from 1 at theta = 0 to 1 - 2m at theta = pi; k carries no gradient.
    """
    sector = ops.stop_gradient(ops.minimum(ops.floor(theta * (margin / math.pi)), margin - 1.0))
    sign = 1.0 - 2.0 * (sector - 2.0 * ops.floor(sector / 2.0))
    return sign * ops.cos(margin * theta) - 2.0 * sector


def annealed_lambda(iteration, base, gamma, power, lambda_min):
    """SphereFace's blend weight max(lambda_min, base (1 + gamma it)^(-power)), float32; iteration counts from 1."""
    iteration = ops.cast(iteration, "float32")
    return ops.maximum(lambda_min, base * ops.power(1.0 + gamma * iteration, -power))


class SphereFaceHead(AngularMarginHead):
    """A-Softmax: W normalised, logits ||x|| cos theta_j; the label column
    ||x|| (lambda cos theta_y + psi(theta_y)) / (1 + lambda).

    `margin` is SphereFace's integer m. lambda = annealed_lambda(iterations, ...) where `iterations` is a
    non-trainable int64 counter that each training call with labels advances by one before the logits are
    computed (as SphereFace's Caffe layer does); `current_lambda()` reads it.
    """

    def __init__(self, num_classes, margin=4, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0, **kwargs):
        super().__init__(num_classes, **kwargs)
        if not isinstance(margin, numbers.Integral) or isinstance(margin, bool) or margin < 1:
            raise ValueError(f"margin must be a positive integer (SphereFace's m), got {margin!r}")
        self.margin = int(margin)
        self.base = check_non_negative("base", base)
        self.gamma = check_non_negative("gamma", gamma)
        self.power = check_non_negative("power", power)
        self.lambda_min = check_non_negative("lambda_min", lambda_min)

    def build(self, embedding_shape):
        super().build(embedding_shape)
        self.iterations = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="iterations",
        )

    def current_lambda(self):
        """The blend weight lambda (float32 scalar) at the current iteration count."""
        return annealed_lambda(self.iterations, self.base, self.gamma, self.power, self.lambda_min)

    def compute_logits(self, embeddings, labels, training):
        if training and labels is not None:
            self.iterations.assign_add(1)
        return super().compute_logits(embeddings, labels, training)

    def logit_scale(self, embeddings):
        return l2_norm(embeddings, axis=1)

    def target_cosine(self, cosine_target):
        blend = self.current_lambda()
        psi = sphereface_psi(safe_angle(cosine_target), float(self.margin))
        return (blend * cosine_target + psi) / (1.0 + blend)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "base": self.base,
            "gamma": self.gamma,
            "power": self.power,
            "lambda_min": self.lambda_min,
        }
