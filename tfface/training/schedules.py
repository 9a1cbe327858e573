"""Learning-rate schedules with linear warm-up: piecewise constant, cosine and constant (units: optimizer steps)."""
import math
from typing import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfface")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then one of:

    - "piecewise": multiplied by `decay` at each step in `boundaries`;
    - "cosine": cosine decay from `learning_rate` to `min_learning_rate` at `total_steps`;
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
    ):
        if kind not in ("piecewise", "cosine", "constant"):
            raise ValueError(f"schedule.name: unknown schedule '{kind}'; available: constant, cosine, piecewise")
        if learning_rate <= 0:
            raise ValueError(f"schedule.learning_rate must be > 0, got {learning_rate}")
        self.kind = kind
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.decay = float(decay)
        self.min_learning_rate = float(min_learning_rate)

    def _after_warmup(self, step):
        if self.kind == "constant":
            return ops.convert_to_tensor(self.learning_rate, "float32")
        if self.kind == "piecewise":
            passed = sum(ops.cast(step >= boundary, "float32") for boundary in self.boundaries)
            return self.learning_rate * ops.power(self.decay, passed) if self.boundaries else self.learning_rate
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
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
        }
