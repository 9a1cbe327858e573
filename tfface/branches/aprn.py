"""APRN (paper 000): adversarial pose regression on a hidden feature map, as a FaceTrainer branch.

Eq. 2, the adversarial regression loss, with D the pose discriminator on stage R'(x) of the backbone:
- D step (the trainer's adversary phase, on stop-gradient features, D's own optimizer): min_D ||D(R'(x)) - l||_1;
- R' step (main phase, weight alpha): min_R' ||D(R'(x)) - l_mean||_1, D frozen (not cooperative), so the gradient
  reaches the backbone up to the chosen stage and nothing else.
l: the image's landmarks (batch["landmarks"], (x / w, y / h) of the input image, [N, M, 2]); l_mean: the mean
landmarks of frontal training faces [M, 2] (python -m experiments.aprn.mean_landmarks). ||.||_1 sums |.| over the
2M coordinates, per example. D starts out predicting l_mean (its FC bias) and always normalises with batch
statistics (training mode, in both of the paper's steps); its moving statistics are never read (D is dropped at
export).

Ablations of Eq. 3 (`objective`): "part1" min_{D,R'} ||D(R'(x)) - l||_1 and "part2" min_{D,R'} ||D(R'(x)) - l_mean||_1,
each a cooperative loss trained jointly by D and the backbone, with no adversary phase.
"""
from typing import List, Optional, Sequence, Union

import keras
import tensorflow as tf

from tfface.backbones.blocks import STAGE_KEYS
from tfface.data.landmarks import (
    IBUG68_LEFT_EYE,
    IBUG68_MOUTH_LEFT,
    IBUG68_MOUTH_RIGHT,
    IBUG68_NOSE_TIP,
    IBUG68_RIGHT_EYE,
    five_from_68,
)
from tfface.branches.mean_landmarks import check_mean_landmarks, load_mean_landmarks
from tfface.branches.pose_discriminator import PoseDiscriminator, default_channels, table_design
from tfface.training.plugins import Branch, StepContext

OBJECTIVES = ("adversarial", "part1", "part2")


def five_points_tensor(landmarks: tf.Tensor) -> tf.Tensor:
    """iBUG 68 points [N, 68, 2] -> the 5-point set [N, 5, 2] (eye centres, nose tip, mouth corners), as
    tfface.data.landmarks.five_from_68 does it in numpy."""
    landmarks = keras.ops.convert_to_tensor(landmarks)
    left_eye = keras.ops.mean(keras.ops.take(landmarks, IBUG68_LEFT_EYE, axis=1), axis=1)
    right_eye = keras.ops.mean(keras.ops.take(landmarks, IBUG68_RIGHT_EYE, axis=1), axis=1)
    points = keras.ops.take(landmarks, [IBUG68_NOSE_TIP, IBUG68_MOUTH_LEFT, IBUG68_MOUTH_RIGHT], axis=1)
    return keras.ops.concatenate([left_eye[:, None], right_eye[:, None], points], axis=1)


def l1_distance(predicted: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """||predicted - target||_1 per example: [N, M, 2] and [N or 1, M, 2] -> [N] float32."""
    difference = keras.ops.cast(predicted, "float32") - keras.ops.cast(target, "float32")
    return keras.ops.sum(keras.ops.abs(difference), axis=(1, 2))


class AdversarialPoseRegression(Branch):
    """The APRN branch; `weight` is alpha (Eq. 1, default 0.2).

    mean_landmarks: path of the JSON file written by `python -m experiments.aprn.mean_landmarks`, or the [M, 2]
      values; needed unless objective is "part1".
    stage: the feature map D reads (stem, stage1..stage4; the paper's best is stage4).
    objective: "adversarial" (Eq. 2) or an ablation of Eq. 3, "part1" or "part2".
    table: D's design, 1 (Table 1, the ResNets: Conv3x3-BN-ReLU of stride 2 with the stage's widths, max-pool 3x3
      stride 2, FC) or 4 (Table 4, CASIA-Net: three Conv3x3x320-BN-ReLU of stride 1, FC; no pooling).
    channels: widths of D's Conv3x3-BN-ReLU blocks; default the table's (for the stage) times `width_multiplier`.
    strides: stride of D's convs; default the table's (1: 2, 4: 1).
    update_every: the R' step runs on every k-th optimizer step, the D step on every step (k D updates per R'
      update, Goodfellow et al.'s k).
    num_landmarks: M; read from mean_landmarks when given.
    five_points: M = 5, the 5-point set (eye centres, nose tip, mouth corners) of 68-point data and l_mean, so
      that alpha weighs 10 coordinates whatever the annotation (the L1 sum, and its push, grow with M).
    optimizer: D's own optimizer; required by the adversarial objective (D must not follow the main loss).
    """

    required_features = ("landmarks",)

    def __init__(
        self,
        mean_landmarks: Union[str, Sequence[Sequence[float]], None] = None,
        stage: str = "stage4",
        objective: str = "adversarial",
        channels: Optional[Sequence[int]] = None,
        width_multiplier: float = 1.0,
        table: int = 1,
        strides: Optional[int] = None,
        sync_batchnorm: bool = False,
        update_every: int = 1,
        num_landmarks: Optional[int] = None,
        five_points: bool = False,
        weight: float = 0.2,
        warmup_steps: int = 0,
        warmup_every: int = 1,
        optimizer: Optional[keras.optimizers.Optimizer] = None,
        name: str = "aprn",
    ):
        super().__init__(
            weight=weight, warmup_steps=warmup_steps, warmup_every=warmup_every, optimizer=optimizer, name=name
        )
        if stage not in STAGE_KEYS:
            raise ValueError(f"{name}: unknown stage '{stage}'; available: {', '.join(STAGE_KEYS)}")
        if objective not in OBJECTIVES:
            raise ValueError(f"{name}: unknown objective '{objective}'; available: {', '.join(OBJECTIVES)}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"{name}: update_every must be an integer >= 1, got {update_every!r}")
        if objective == "adversarial" and optimizer is None:
            raise ValueError(
                f"{name}: the adversarial objective trains D with its own optimizer; give the branch an `optimizer` "
                f"map (e.g. {{name: sgd, learning_rate: 0.01}})"
            )
        self.mean_landmarks_values = self._read_mean_landmarks(mean_landmarks, objective, name)
        self.five_points = bool(five_points)
        if self.five_points:
            num_landmarks = 5
            if self.mean_landmarks_values is not None and len(self.mean_landmarks_values) == 68:
                self.mean_landmarks_values = five_from_68(self.mean_landmarks_values).astype("float32")
        if self.mean_landmarks_values is not None:
            if num_landmarks is not None and num_landmarks != len(self.mean_landmarks_values):
                raise ValueError(
                    f"{name}: num_landmarks {num_landmarks} does not match the {len(self.mean_landmarks_values)} "
                    f"mean landmarks"
                )
            num_landmarks = len(self.mean_landmarks_values)
        if num_landmarks is None or int(num_landmarks) < 1:
            raise ValueError(f"{name}: give mean_landmarks or num_landmarks (a positive integer)")
        self.stage = stage
        self.objective = objective
        self.has_adversary = objective == "adversarial"
        self.num_landmarks = int(num_landmarks)
        try:
            design = table_design(table)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        self.channels = (
            tuple(channels) if channels is not None else default_channels(stage, width_multiplier, table=table)
        )
        self.strides = design["strides"] if strides is None else strides
        self.pool = design["pool"]
        self.sync_batchnorm = sync_batchnorm
        self.update_every = update_every

    @staticmethod
    def _read_mean_landmarks(mean_landmarks, objective: str, name: str):
        if mean_landmarks is None:
            if objective != "part1":
                raise ValueError(f"{name}: objective '{objective}' needs mean_landmarks "
                                 "(python -m experiments.aprn.mean_landmarks)")
            return None
        if isinstance(mean_landmarks, str):
            return load_mean_landmarks(mean_landmarks)
        return check_mean_landmarks(mean_landmarks, f"{name} options")

    def build_for(self, features_spec, head) -> None:
        if self.stage not in features_spec:
            raise ValueError(f"{self.name}: the backbone has no feature map '{self.stage}'; it has {sorted(features_spec)}")
        self.discriminator = PoseDiscriminator(
            self.num_landmarks, self.channels, strides=self.strides, pool=self.pool,
            sync_batchnorm=self.sync_batchnorm, initial_landmarks=self.mean_landmarks_values,
            name=f"{self.name}_discriminator",
        )
        self.discriminator.build((None, *features_spec[self.stage]))
        if self.mean_landmarks_values is not None:
            self.mean_landmarks = self.add_weight(
                shape=self.mean_landmarks_values.shape,
                initializer=keras.initializers.Constant(self.mean_landmarks_values),
                trainable=False,
                name="mean_landmarks",
            )
        self.built = True

    # ------------------------------------------------------------------------------------------- variables
    def adversary_variables(self) -> List[tf.Variable]:
        return list(self.discriminator.trainable_variables) if self.has_adversary else []

    def cooperative_variables(self) -> List[tf.Variable]:
        return [] if self.has_adversary else list(self.discriminator.trainable_variables)

    # ------------------------------------------------------------------------------------------- losses
    def predict_landmarks(self, context: StepContext) -> tf.Tensor:
        """D(R'(x)): [N, M, 2] float32 from the chosen stage of `context.features`."""
        return self.discriminator(context.features[self.stage], training=True)

    def _true_landmarks(self, context: StepContext) -> tf.Tensor:
        if "landmarks" not in context.batch:
            raise ValueError(f"{self.name}: the batch has no 'landmarks'; add landmarks to data.features")
        landmarks = context.batch["landmarks"]
        if self.five_points and landmarks.shape[-2] == 68:
            landmarks = five_points_tensor(landmarks)
        if landmarks.shape[-2] != self.num_landmarks:
            raise ValueError(
                f"{self.name}: the data has {landmarks.shape[-2]} landmarks per face, the branch "
                f"{self.num_landmarks} (mean_landmarks / num_landmarks)"
            )
        return landmarks

    def adversary_loss(self, context: StepContext) -> Optional[tf.Tensor]:
        """The D step, [N]: ||D(R'(x)) - l||_1 (features already stop-gradient)."""
        if not self.has_adversary:
            return None
        return l1_distance(self.predict_landmarks(context), self._true_landmarks(context))

    def loss(self, context: StepContext) -> tf.Tensor:
        """[N]: the R' step ||D(R'(x)) - l_mean||_1 (zero off the update_every grid), or the Eq. 3 ablation."""
        predicted = self.predict_landmarks(context)
        if self.objective == "part1":
            return l1_distance(predicted, self._true_landmarks(context))
        distance = l1_distance(predicted, self.mean_landmarks[None])
        if self.objective == "part2" or self.update_every == 1:
            return distance
        on_grid = keras.ops.cast(keras.ops.equal(context.step % self.update_every, 0), "float32")
        return distance * on_grid
