"""The extension points of FaceTrainer: regularizers, branches and gates.

Every plug-in is a `keras.layers.Layer` so that its variables are tracked, checkpointed and placed under the
distribution strategy with the rest of the model. The trainer hands each plug-in a `StepContext` holding what one
training step computed; a plug-in reads what it needs from it.

Loss convention (what makes MirroredStrategy correct): a loss method returns either a per-example tensor [N]
(averaged by the trainer over the GLOBAL batch; a gate weighs it per its scope, see `Gate`) or a scalar that is a
property of the whole model (for example a term on the class-centre matrix), which the trainer divides by the number
of replicas, because gradients are summed across replicas.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import keras
import tensorflow as tf


@dataclasses.dataclass
class StepContext:
    """What one step computed, as seen by the plug-ins (shapes per replica).

    batch: the input dict of the data pipeline ("image" [N, H, W, 3], "label" [N], optional extras).
    features: the backbone's outputs {"stem", "stage1".."stage4": [N, h, w, c], "embedding": [N, D]}.
    labels: int32 [N] given labels.
    head: the margin head (owns `kernel` [D, C]).
    head_outputs: {"logits", "plain_logits": [N, C] float32}; filled after the head ran.
    step: int64 scalar, number of optimizer updates before this step.
    """

    batch: Dict[str, tf.Tensor]
    features: Dict[str, tf.Tensor]
    labels: tf.Tensor
    head: keras.layers.Layer
    step: tf.Tensor
    head_outputs: Optional[Dict[str, tf.Tensor]] = None

    def with_stopped_features(self) -> "StepContext":
        """A copy whose features carry no gradient back to the backbone (for adversary updates)."""
        stopped = {name: tf.stop_gradient(value) for name, value in self.features.items()}
        return dataclasses.replace(self, features=stopped)


class LossWeight:
    """A loss weight with an optional linear warm-up from 0 (RegularFace Eq. 15: lambda*(t) = t / N lambda, t <= N).

    warmup_steps: N in optimizer steps; warmup_every: the ramp moves once every this many steps, so t counts whole
    periods: steps_per_epoch gives Eq. 15's "t is time step (epoch)" (lambda* = e / N_epochs lambda during epoch e,
    counted from 0), 1 a ramp that moves every step.
    """

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0, warmup_every: int = 1):
        if weight < 0:
            raise ValueError(f"loss weight must be >= 0, got {weight}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if isinstance(warmup_every, bool) or int(warmup_every) != warmup_every or warmup_every < 1:
            raise ValueError(f"warmup_every must be an integer >= 1, got {warmup_every!r}")
        self.weight = float(weight)
        self.warmup_steps = int(warmup_steps)
        self.warmup_every = int(warmup_every)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        """Weight (float32 scalar) at optimizer step `step`."""
        if self.warmup_steps == 0:
            return tf.constant(self.weight, tf.float32)
        elapsed = (tf.cast(step, tf.int64) // self.warmup_every) * self.warmup_every
        ramp = tf.minimum(tf.cast(elapsed, tf.float32) / float(self.warmup_steps), 1.0)
        return self.weight * ramp


class Plugin(keras.layers.Layer):
    """Shared behaviour of regularizers and branches: a weighted loss and a hook after each update.

    `log_names`: names of the extra scalar metrics `logs` returns (the trainer creates their trackers up front).
    `required_features`: the data features (tfface.data.pipeline.EXTRA_FEATURES) its loss reads from the batch; the
    trainer asks the data for them when the plug-in is enabled.
    """

    log_names: Tuple[str, ...] = ()
    required_features: Tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0, warmup_every: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.loss_weight = LossWeight(weight, warmup_steps, warmup_every)

    def build_for(self, features_spec: Dict[str, tuple], head: keras.layers.Layer) -> None:
        """Creates variables once the backbone's output shapes (without batch) and the head are known."""
        self.built = True

    def loss(self, context: StepContext) -> Optional[tf.Tensor]:
        """Unweighted loss: per-example [N] float32, or a float32 scalar for model-wide terms; None for no loss."""
        return None

    def after_update(self, context: StepContext) -> None:
        """Called in replica context after the optimizers applied this step's gradients (centre updates, projections).

        State kept in variables must be updated identically on every replica: all-reduce batch statistics first
        (`tf.distribute.get_replica_context().all_reduce`) and create such variables with
        aggregation="only_first_replica".
        """

    def logs(self, context: StepContext) -> Dict[str, tf.Tensor]:
        """Values of `log_names` for this step (scalars or per-example; averaged per epoch by the trainer)."""
        return {}


class Regularizer(Plugin):
    """A loss on the embeddings and/or the head's class centres (center loss, center invariant, exclusive)."""


class Branch(Plugin):
    """An auxiliary network on the backbone's features, removed at export (APRN, LATSE decoder, 3D bypass).

    - `cooperative_variables()`: variables trained together with the backbone on the main loss (decoder, 3D nets),
      by the branch's own optimizer when it has one, else by the main optimizer.
    - `adversary_loss(context)`: when not None, an adversary phase runs first each step: this loss, on features
      that carry no gradient, updates only `adversary_variables()` with the branch's own optimizer.
    - `loss(context)`: the main-phase term; its gradient reaches the backbone and the cooperative variables only.
    `has_adversary` says whether the adversary phase runs for this branch.
    """

    has_adversary: bool = False

    def __init__(self, optimizer: Optional[keras.optimizers.Optimizer] = None, **kwargs):
        super().__init__(**kwargs)
        self.optimizer = optimizer

    def cooperative_variables(self) -> List[tf.Variable]:
        return []

    def adversary_variables(self) -> List[tf.Variable]:
        return []

    def adversary_loss(self, context: StepContext) -> Optional[tf.Tensor]:
        return None


GATE_SCOPES = ("backbone", "losses")


class Gate(keras.layers.Layer):
    """Per-example weights in [0, 1] (LATSE's frozen-teacher top-k gate), applied by the trainer per `scope`:

    - "backbone" (default; LATSE Algorithm 1, where only `gradForEm`, the gradient into the student network, is
      filtered): every per-example loss counts in full for the head, the branches and the regularizers, and the
      gradient that flows from example i's losses back into the backbone is multiplied by its weight;
    - "losses": every per-example loss is multiplied by the weight before the global-batch average, so a gated-out
      example trains nothing (not the head's W, not a decoder).
    """

    log_names: Tuple[str, ...] = ()

    def __init__(self, scope: str = "backbone", **kwargs):
        super().__init__(**kwargs)
        if scope not in GATE_SCOPES:
            raise ValueError(f"gate.options.scope: unknown scope {scope!r}; available: {', '.join(GATE_SCOPES)}")
        self.scope = scope

    def logs(self, context: StepContext) -> Dict[str, tf.Tensor]:
        return {}

    def build_for(self, features_spec: Dict[str, tuple], head: keras.layers.Layer) -> None:
        self.built = True

    def weights_for(self, context: StepContext) -> tf.Tensor:
        """float32 [N] weights in [0, 1] for the examples of this replica (called before the head runs)."""
        raise NotImplementedError


def gate_backbone_gradient(features: Dict[str, tf.Tensor], weights: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The same feature values, whose gradient back into the backbone is multiplied by each example's weight (a
    gate's "backbone" scope).

    features: {name: [N, ...]} backbone outputs; weights: float32 [N]. Each feature becomes
    stop_gradient(f) + w * (f - stop_gradient(f)): its value is f bit for bit (the second term is w * 0), and
    d/df = w, so a loss downstream still sees (and trains its own variables on) every example, while example i
    sends w_i times its gradient into the backbone (exactly 0 for w_i = 0).
    """
    gated = {}
    for name, value in features.items():
        stopped = tf.stop_gradient(value)
        per_example = tf.reshape(tf.cast(weights, value.dtype), [-1] + [1] * (value.shape.rank - 1))
        gated[name] = stopped + per_example * (value - stopped)
    return gated
