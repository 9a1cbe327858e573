"""LSoftmaxHead (L-Softmax): SphereFace's psi and annealing with W left unnormalised."""
from tfface.heads.base import l2_norm
from tfface.heads.sphereface import SphereFaceHead


class LSoftmaxHead(SphereFaceHead):
    """Logits ||W_j|| ||x|| cos theta_j (= x W, no bias); the label column
    ||W_y|| ||x|| (lambda cos theta_y + psi(theta_y)) / (1 + lambda).

    Same options, `iterations` counter and lambda schedule as `SphereFaceHead`.
    """

    def logit_scale(self, embeddings):
        return l2_norm(embeddings, axis=1) * l2_norm(self.kernel, axis=0)
