"""Center invariant loss (Wu et al. 2018, paper 003, Eq. 3-4 and gradient Eq. 20).

Per example i of class y, with c_k the class centres of the embeddings and m classes:

    L_I(i) = 1/4 (||c_y||^2 - tau)^2,   tau = 1/m sum_k ||c_k||^2                           (Eq. 3, 15-16)
    dL_I(i)/dx_i = 1/n_y (1 - 1/m) (||c_y||^2 - tau) c_y                                  (Eq. 20)

The centres c_k are running class means (Eq. 2 estimated online): non-trainable, moved after each step by Wen's
rule (class_centers.py). The loss value uses them as they are; its gradient follows the paper's chain rule
dc_y/dx_i = 1/n_y (Eq. 19), with n_y the number of examples of class y in the global batch (the examples through
which the current features enter c_y). This is implemented exactly by giving each example its own differentiable
copy of its centre, c_y + (x_i - stop_gradient(x_i)) / n_y, whose value is c_y, inside both ||c_y||^2 and tau.
So a centre inside the circle of radius sqrt(tau) is pulled out and one outside is pushed in (003, Fig. 3).
"""
import tensorflow as tf

from tfface.regularizers.class_centers import RunningCentersRegularizer, global_class_counts
from tfface.training.plugins import StepContext


class CenterInvariantLoss(RunningCentersRegularizer):
    """Per-example loss [N] = 1/4 (||c_y||^2 - mean_k ||c_k||^2)^2 (embedding units to the fourth power).

    Config: {name: center_invariant, weight: gamma (0.001 in 003), options: {alpha: 0.5}}; alpha is the rate of
    the running centres. Every one of the m = C classes of the head counts in tau (unseen classes sit at 0).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        weight: float = 1.0,
        warmup_steps: int = 0,
        warmup_every: int = 1,
        name: str = "center_invariant",
    ):
        super().__init__(alpha=alpha, weight=weight, warmup_steps=warmup_steps, warmup_every=warmup_every, name=name)

    def loss(self, context: StepContext) -> tf.Tensor:
        embeddings = self.embeddings_of(context)
        labels = tf.cast(context.labels, tf.int32)
        class_sizes = tf.gather(global_class_counts(labels, self.num_classes), labels)[:, None]  # n_y [N, 1]
        centers = tf.convert_to_tensor(self.centers)
        squared_norms = tf.reduce_sum(tf.square(centers), axis=1)
        own_center = tf.gather(centers, labels) + (embeddings - tf.stop_gradient(embeddings)) / class_sizes
        own_squared_norm = tf.reduce_sum(tf.square(own_center), axis=1)
        tau = (tf.reduce_sum(squared_norms) - tf.gather(squared_norms, labels) + own_squared_norm) / self.num_classes
        return 0.25 * tf.square(own_squared_norm - tau)
