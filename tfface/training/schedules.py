"""Learning-rate schedules with linear warm-up: piecewise constant, cosine, polynomial (arcface_torch's) and constant
(units: optimizer steps)."""
import math
from typing import Sequence

import keras
from keras import ops

KINDS = ("piecewise", "cosine", "polynomial", "constant")


@keras.saving.register_keras_serializable(package="tfface")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then one of:

    - "piecewise": multiplied by `decay` at each step in `boundaries`;
    - "cosine": cosine decay from `learning_rate` to `min_learning_rate` at `total_steps`;
    - "polynomial": arcface_torch's PolynomialLRWarmup (closed form), `learning_rate` (1 - (t - w) / (T - w))^power
      at step t, w = warmup_steps, T = total_steps, 0 from T on (power 1: linear to 0, arcface_torch's default);
    - "constant".
    """

    def __init__(
        self,
        kind: str,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        boundaries: Sequence[int] = (),
        decay: float = 0.1,
        min_learning_rate: float = 0.0,
        power: float = 1.0,
    ):
        if kind not in KINDS:
            raise ValueError(f"schedule.name: unknown schedule '{kind}'; available: {', '.join(sorted(KINDS))}")
        if learning_rate <= 0:
            raise ValueError(f"schedule.learning_rate must be > 0, got {learning_rate}")
        self.kind = kind
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.decay = float(decay)
        self.min_learning_rate = float(min_learning_rate)
        self.power = float(power)

    def _after_warmup(self, step):
        if self.kind == "constant":
            return ops.convert_to_tensor(self.learning_rate, "float32")
        if self.kind == "piecewise":
            passed = sum(ops.cast(step >= boundary, "float32") for boundary in self.boundaries)
            return self.learning_rate * ops.power(self.decay, passed) if self.boundaries else self.learning_rate
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.kind == "polynomial":
            return self.learning_rate * ops.power(1.0 - progress, self.power)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.min_learning_rate + (self.learning_rate - self.min_learning_rate) * cosine

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.cast(self._after_warmup(step), "float32")
        if self.warmup_steps == 0:
            return rate
        warmup = self.learning_rate * (step + 1.0) / self.warmup_steps
        return ops.where(step < self.warmup_steps, warmup, rate)

    def get_config(self):
        return {
            "kind": self.kind,
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "boundaries": self.boundaries,
            "decay": self.decay,
            "min_learning_rate": self.min_learning_rate,
            "power": self.power,
        }
