"""LATSE's frozen-teacher gate (paper 001, Sec. 3.3 and Algorithm 1), registered in GATES as "teacher_topk".

A teacher is trained first on the same (noisy) data and frozen. During the student's training an example has weight
1 when its given label is among the teacher's top-k classes for the image, else 0. With the default scope
"backbone" (Algorithm 1: `if y_i in topk(prob_yteacher, k) then gradForEm = filter(gradFromLoss)`, then
`studentNet.backward(gradForEm)`), a gated-out example sends no gradient into the student's backbone, while the
classifier W (`FCLMSoftmax.backward(DLoss)`) and the decoder (`genNet.backward(GLoss)`) still learn from it. Scope
"losses" multiplies its identity loss and every per-example branch loss by 0 instead (W and decoder learn nothing
from it either).

The teacher is rebuilt from its training work dir: run.json (backbone, input shape, embedding size, class count),
config.yaml (backbone and head options), backbone.weights.h5 and head.weights.npz. Its backbone runs in inference
mode (moving batch-norm statistics) and its variables are non-trainable; they belong to the gate, never to the
student's backbone, so an export of the student carries none of them.

The top-k test uses the teacher's plain logits (no margin): the given label is kept when fewer than k classes score
strictly higher (ties count as kept, as `tf.math.in_top_k`).
"""
import numbers
from pathlib import Path
from typing import Dict, Iterable

import keras
import numpy as np
import tensorflow as tf

from tfface import heads, runs
from tfface.errors import ConfigError
from tfface.training.callbacks import load_layer_weights
from tfface.training.plugins import Gate, StepContext


def read_teacher(teacher_dir) -> Dict:
    """`tfface.runs.read_run` of the teacher's work dir plus {"num_classes", "head", "head_options",
    "head_weights"}; a missing file or field raises ConfigError naming it."""
    teacher_dir = Path(teacher_dir)
    run = runs.read_run(teacher_dir)
    head_weights = teacher_dir / runs.HEAD_WEIGHTS
    if not head_weights.is_file():
        raise ConfigError(f"gate.options.teacher: {teacher_dir} has no head.weights.npz (a finished training run?)")
    head_config = runs.read_config(teacher_dir)["head"]
    return {
        **run,
        "num_classes": runs.num_classes(teacher_dir),
        "head": head_config["name"],
        "head_options": dict(head_config["options"] or {}),
        "head_weights": head_weights,
    }


class TeacherTopKGate(Gate):
    """Weight 1 where the given label is in the frozen teacher's top-k classes, else 0.

    teacher: the teacher's training work dir (trainers.train output); k: the top-k of Algorithm 1 (1 or 3 in the
    paper); scope: "backbone" (Algorithm 1) or "losses" (see `Gate`). Logs "kept_fraction", the share of
    examples with weight 1.
    """

    log_names = ("kept_fraction",)

    def __init__(self, teacher: str, k: int = 1, scope: str = "backbone", name: str = "teacher_topk"):
        try:
            super().__init__(scope=scope, name=name)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ConfigError(f"gate.options.k must be a positive integer, got {k!r}")
        self.k = int(k)
        self.teacher_dir = Path(teacher)
        self.teacher = read_teacher(teacher)
        self._remember(None, None)

    def build_for(self, features_spec: Dict[str, tuple], head: keras.layers.Layer) -> None:
        """Checks the student's class count against the teacher's, then `build_teacher` (in the strategy scope, as
        FaceTrainer.build_all calls it)."""
        if int(head.num_classes) != self.teacher["num_classes"]:
            raise ConfigError(
                f"gate.options.teacher: the teacher in {self.teacher_dir} has {self.teacher['num_classes']} classes, "
                f"the student's head {head.num_classes}; both must be trained on the same label set"
            )
        self.build_teacher()

    def build_teacher(self) -> None:
        """Builds the frozen teacher (backbone and head) and loads its weights."""
        num_classes = self.teacher["num_classes"]
        if self.k > num_classes:
            raise ConfigError(f"gate.options.k = {self.k} exceeds the teacher's {num_classes} classes")
        self.teacher_backbone = runs.build_backbone(self.teacher, self.teacher_dir / runs.BACKBONE_WEIGHTS)
        self.teacher_backbone.trainable = False
        try:
            self.teacher_head = heads.HEADS.build(
                self.teacher["head"], num_classes=num_classes, name="teacher_head", **self.teacher["head_options"]
            )
        except ValueError as error:
            raise ConfigError(f"{self.teacher_dir / 'config.yaml'}: head: {error}") from None
        self.teacher_head.build((None, self.teacher["embedding_size"]))
        try:
            load_layer_weights(self.teacher_head, str(self.teacher["head_weights"]))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.teacher_head.trainable = False
        self.built = True

    def teacher_logits(self, images: tf.Tensor) -> tf.Tensor:
        """Normalised images [N, H, W, 3] (the teacher's input size) -> the teacher's plain logits [N, C] float32."""
        expected = tuple(self.teacher["input_shape"])
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{self.name}: the teacher in {self.teacher_dir} takes images of shape {expected}, the batch has "
                f"{tuple(images.shape[1:])}"
            )
        embeddings = self.teacher_backbone(images, training=False)["embedding"]
        return tf.stop_gradient(self.teacher_head(embeddings, training=False)["plain_logits"])

    def label_ranks(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """int32 [N]: how many classes the teacher scores strictly above the given label (0 = its top-1)."""
        logits = self.teacher_logits(images)
        label_logits = tf.gather(logits, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
        return tf.reduce_sum(tf.cast(logits > label_logits[:, None], tf.int32), axis=1)

    def weights_for(self, context: StepContext) -> tf.Tensor:
        weights = tf.cast(self.label_ranks(context.batch["image"], context.labels) < self.k, tf.float32)
        self._remember(context, weights)
        return weights

    def logs(self, context: StepContext) -> Dict[str, tf.Tensor]:
        """The kept fraction of this step (the weights of the same step's `weights_for`: one teacher pass a step)."""
        last_context, last_weights = self._last_step
        if last_context is context:
            return {"kept_fraction": last_weights}
        return {"kept_fraction": self.weights_for(context)}

    def _remember(self, context, weights) -> None:
        """Keeps the step's weights for `logs`, outside Keras/TF attribute tracking (they are step tensors, not
        state to checkpoint)."""
        object.__setattr__(self, "_last_step", (context, weights))


def gate_statistics(ranks, labels, true_labels, ks: Iterable[int] = (1, 3)) -> Dict[int, Dict[str, float]]:
    """How a teacher's top-k gate treats clean (label == true_label) and noisy examples.

    ranks: [N] ints from `TeacherTopKGate.label_ranks`; labels, true_labels: [N]. Returns for each k
    {"kept", "clean_kept", "noisy_dropped"} (fractions of all, of the clean and of the noisy examples; NaN when a
    group is empty) and the group sizes {"clean", "noisy"}.
    """
    ranks, labels, true_labels = (np.asarray(values) for values in (ranks, labels, true_labels))
    if not ranks.shape == labels.shape == true_labels.shape or ranks.ndim != 1:
        raise ValueError(
            f"ranks, labels and true_labels must be [N] of one length, got {ranks.shape}, {labels.shape}, "
            f"{true_labels.shape}"
        )
    clean = labels == true_labels

    def fraction(mask):
        return float(mask.mean()) if mask.size else float("nan")

    statistics = {}
    for k in ks:
        kept = ranks < int(k)
        statistics[int(k)] = {
            "kept": fraction(kept),
            "clean_kept": fraction(kept[clean]),
            "noisy_dropped": fraction(~kept[~clean]),
            "clean": int(clean.sum()),
            "noisy": int((~clean).sum()),
        }
    return statistics
