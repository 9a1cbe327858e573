"""Center loss (Wen et al. 2016): 1/2 ||x_i - c_{y_i}||^2 per example, centres moved at rate alpha after each step."""
import tensorflow as tf

from tfface.regularizers.class_centers import RunningCentersRegularizer
from tfface.training.plugins import StepContext


class CenterLoss(RunningCentersRegularizer):
    """Per-example loss [N] = 1/2 ||x_i - c_{y_i}||^2 (x the "embedding" features, in embedding units squared).

    The centres are not trained by the optimizer: the gradient reaches only x (x_i - c_{y_i}); the centres follow
    Wen's update (see class_centers.py). Config: {name: center, weight: lambda, options: {alpha: 0.5}}.
    """

    def __init__(
        self, alpha: float = 0.5, weight: float = 1.0, warmup_steps: int = 0, warmup_every: int = 1, name: str = "center"
    ):
        super().__init__(alpha=alpha, weight=weight, warmup_steps=warmup_steps, warmup_every=warmup_every, name=name)

    def loss(self, context: StepContext) -> tf.Tensor:
        embeddings = self.embeddings_of(context)
        centers = tf.gather(tf.convert_to_tensor(self.centers), tf.cast(context.labels, tf.int32))
        return 0.5 * tf.reduce_sum(tf.square(embeddings - centers), axis=1)
