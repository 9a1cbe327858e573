"""Exclusive regularization of RegularFace (Zhao et al. 2019, paper 004): Eq. 9, projected gradient Eq. 13.

On the head's class-centre matrix W (our kernel is [D, C]: column W_i is class i's centre):

    L_r(W) = 1/C sum_i max_{j != i} cos(W_i, W_j) = mean_i Sep_i                      (Eq. 6, 9)

Its (sub)gradient for column j collects the nearest neighbour j' of W_j and every column whose nearest neighbour
is W_j (Eq. 14); differentiating through the normalisation gives, per term, the part of that neighbour orthogonal
to W_j, divided by the norms. After every optimizer step the columns are projected back to unit norm (Eq. 13). The
linear warm-up of the weight (Eq. 15, "t is time step (epoch)") is the config entry's `warmup_epochs` N: during
epoch e (from 0) the weight is min(e / N, 1) lambda; `warmup_per: step` ramps it every step instead (LossWeight).
The cosine matrix takes C^2 floats.
"""
import keras
import tensorflow as tf
from keras import ops

from tfface.heads.base import l2_normalize
from tfface.training.plugins import Regularizer, StepContext


def exclusive_term(kernel) -> tf.Tensor:
    """L_r(W) (float32 scalar, a mean cosine in [-1, 1]) of a kernel [D, C] with C >= 2 classes in its columns."""
    kernel = ops.cast(kernel, "float32")
    num_classes = kernel.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError(f"exclusive regularization needs a kernel [D, C] with C >= 2 classes, got {kernel.shape}")
    columns = l2_normalize(kernel, axis=0)
    cosines = ops.matmul(ops.transpose(columns), columns)
    off_diagonal = ops.where(ops.eye(num_classes, dtype="bool"), -2.0, cosines)
    return ops.mean(ops.max(off_diagonal, axis=1))


def _project_columns(strategy: tf.distribute.Strategy, kernel: tf.Variable) -> None:
    """Cross-replica: sets every column of the (mirrored) kernel [D, C] to unit norm on all devices."""
    strategy.extended.update(kernel, lambda variable: variable.assign(l2_normalize(variable, axis=0)), group=False)


class ExclusiveRegularizer(Regularizer):
    """Model-wide scalar loss L_r(head.kernel); after each step, every column of head.kernel is set to unit norm.

    Config: {name: exclusive, weight: lambda, warmup_epochs: N, warmup_per: epoch}. The projection is applied once in cross-replica
    context (the kernel is a mirrored variable), so every replica keeps the same W.
    """

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0, warmup_every: int = 1, name: str = "exclusive"):
        super().__init__(weight=weight, warmup_steps=warmup_steps, warmup_every=warmup_every, name=name)

    def build_for(self, features_spec, head: keras.layers.Layer) -> None:
        if not hasattr(head, "kernel"):
            raise ValueError(f"{self.name}: the head {head.name} has no class-centre matrix `kernel` [D, C]")
        if head.kernel.shape[-1] < 2:
            raise ValueError(f"{self.name}: needs at least 2 classes, the head has {head.kernel.shape[-1]}")
        self.built = True

    def loss(self, context: StepContext) -> tf.Tensor:
        return exclusive_term(context.head.kernel)

    def after_update(self, context: StepContext) -> None:
        kernel = context.head.kernel
        kernel = kernel.value if isinstance(kernel, keras.Variable) else kernel
        tf.distribute.get_replica_context().merge_call(_project_columns, args=(kernel,))
