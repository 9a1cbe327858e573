"""FaceTrainer: the composed keras.Model that trains a backbone, a margin head and any set of plug-ins in one `fit`.

One step (DESIGN.md, "The one idea"):
1. forward the backbone once;
2. adversary phase: each branch with an adversary loss updates its own variables on stop-gradient features;
3. main phase: identity loss per example, plus per-example plug-in losses, averaged over the global batch; plus
   model-wide plug-in terms divided by the number of replicas; gradients go to the backbone and head (main
   optimizer) and to the branches' cooperative variables (their own optimizers). A gate of scope "backbone" (LATSE
   Algorithm 1) scales each example's gradient into the backbone by its weight and leaves the losses whole; one of
   scope "losses" multiplies every per-example loss by the weight;
4. post-update hooks (centre updates, W projection, mean-image banks).
Only the backbone's embedding path is kept at export (`call` returns the embedding).
"""
from typing import Dict, Iterable, List, Optional, Sequence

import keras
import tensorflow as tf

from tfface.training.plugins import Branch, Gate, Plugin, Regularizer, StepContext, gate_backbone_gradient
from tfface.training.precision import rescale_gradients
from tfface.training.stages import FREEZABLE_PARTS


class FaceTrainer(keras.Model):
    """backbone: keras.Model image -> {"stem".."stage4", "embedding"}; head: MarginHead; plug-ins optional.

    `frozen` names parts ("backbone", "head", "batch_norm") whose variables the main optimizer leaves alone;
    their batch normalization runs in inference mode. `learning_rate_multipliers` ({"backbone": 0.1}) multiplies a
    part's gradients before the main optimizer (for SGD: its rate; decoupled weight decay unchanged).
    `count_skipped_records` logs the sum of the batches' "skipped_records" per epoch (the pipeline's count of bad
    records left out).

    A head whose logits cover a subset of the classes (Partial FC) also outputs "targets" [N], the label column in
    its logits; a head with `sharded_variables` (one shard per replica, never all-reduced) updates them itself
    through `apply_sharded_gradients(gradients, optimizer)`. The loss is scaled by `optimizer.scale_loss` before
    the gradients (mixed float16; see tfface.training.precision).
    """

    def __init__(
        self,
        backbone: keras.Model,
        head: keras.layers.Layer,
        regularizers: Sequence[Regularizer] = (),
        branches: Sequence[Branch] = (),
        gate: Optional[Gate] = None,
        frozen: Iterable[str] = (),
        count_skipped_records: bool = False,
        learning_rate_multipliers: Optional[Dict[str, float]] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head
        self.regularizers = list(regularizers)
        self.branches = list(branches)
        self.gate = gate
        self.learning_rate_multipliers = dict(learning_rate_multipliers or {})
        self.identity_loss_enabled = True
        self.active_plugins = {plugin.name for plugin in self.plugins}
        self.set_stage(frozen=frozen)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.identity_loss_tracker = keras.metrics.Mean(name="identity_loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.plugin_trackers = {
            plugin.name: keras.metrics.Mean(name=f"{plugin.name}_loss") for plugin in self.plugins
        }
        self.adversary_trackers = {
            branch.name: keras.metrics.Mean(name=f"{branch.name}_adversary_loss")
            for branch in self.branches
            if branch.has_adversary
        }
        self.extra_trackers = {
            name: keras.metrics.Mean(name=name)
            for source in self._log_sources()
            for name in source.log_names
        }
        # the batches' "skipped_records" (bad records the pipeline left out, data.on_bad_record: skip) summed per epoch
        self.skipped_tracker = keras.metrics.Sum(name="skipped_records") if count_skipped_records else None

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def plugins(self) -> List[Plugin]:
        return [*self.regularizers, *self.branches]

    def _log_sources(self) -> List[keras.layers.Layer]:
        return [*self.plugins] + ([self.gate] if self.gate is not None else [])

    def _active(self) -> List[Plugin]:
        return [plugin for plugin in self.plugins if plugin.name in self.active_plugins]

    def set_stage(
        self, frozen: Iterable[str] = (), identity_loss: bool = True, plugins: Optional[Iterable[str]] = None
    ) -> None:
        """Sets what the next `fit` trains (a stage of a schedule such as 3D-BERL's FR / aux / joint).

        frozen: parts ("backbone", "head", "batch_norm": the backbone's batch normalization layers) the main
        optimizer leaves alone, batch normalization in a frozen part in inference mode (its statistics kept);
        identity_loss: whether the head's classification loss counts; plugins: names of the regularizers and
        branches whose losses, adversary phases and hooks run (None: all). Rebuilds the step function.
        """
        known = {plugin.name for plugin in self.plugins}
        for part in frozen:
            if part not in FREEZABLE_PARTS:
                raise ValueError(f"train.freeze: unknown part '{part}'; freezable parts: {', '.join(FREEZABLE_PARTS)}")
        active = known if plugins is None else set(plugins)
        unknown = active - known
        if unknown:
            raise ValueError(
                f"train.stages: unknown plug-in(s) {', '.join(sorted(unknown))}; configured: {', '.join(sorted(known))}"
            )
        self.backbone.trainable = "backbone" not in frozen
        self.head.trainable = "head" not in frozen
        for layer in self.backbone._flatten_layers():  # set alone: the backbone's flag reaches them only on a change
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = not {"backbone", "batch_norm"} & set(frozen)
        self.frozen = tuple(frozen)
        self.identity_loss_enabled = bool(identity_loss)
        self.active_plugins = active
        self.train_function = None

    def call(self, images, training=False):
        """images: float32 [N, H, W, 3] normalised -> embeddings [N, D] (the inference path)."""
        return self.backbone(images, training=training)["embedding"]

    def build_all(self, input_shape: Sequence[int]) -> None:
        """Builds backbone, head, plug-ins and every optimizer. Call inside the strategy scope, before `fit`.

        input_shape: (H, W, 3) of the images fed to the backbone.
        """
        features = self.backbone(keras.ops.zeros((1, *input_shape)), training=False)
        if not self.head.built:
            self.head.build(tuple(features["embedding"].shape))
        features_spec = {name: tuple(value.shape[1:]) for name, value in features.items()}
        for plugin in self.plugins:
            plugin.build_for(features_spec, self.head)
        if self.gate is not None:
            self.gate.build_for(features_spec, self.head)
        self.built = True
        stage = {"frozen": self.frozen, "identity_loss": self.identity_loss_enabled, "plugins": self.active_plugins}
        self.set_stage()  # every part trainable, so the optimizers get slots for what any later stage trains
        self.optimizer.build(self._main_variables())
        for branch in self.branches:
            if branch.optimizer is not None:
                variables = list(branch.cooperative_variables()) + list(branch.adversary_variables())
                branch.optimizer.build(variables)
        self.set_stage(**stage)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' symbolic build before fit/evaluate, skipped once `build_all` ran: it reduces one distributed batch
        with `strategy.reduce`, which MultiWorkerMirroredStrategy cannot do for dict batches (keras-team/keras#20329).
        """
        if not (self.built and self.optimizer is not None and self.optimizer.built):
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _main_variables(self) -> List[tf.Variable]:
        """Variables the main optimizer updates: backbone, head and cooperative branch variables of the stage's
        active branches that have no optimizer of their own (an inactive branch gets no gradient)."""
        variables = list(self.backbone.trainable_variables) + list(self.head.trainable_variables)
        for branch in self.branches:
            if branch.optimizer is None and branch.name in self.active_plugins:
                variables += list(branch.cooperative_variables())
        return variables

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.identity_loss_tracker,
            self.accuracy_tracker,
            *self.plugin_trackers.values(),
            *self.adversary_trackers.values(),
            *self.extra_trackers.values(),
            *([self.skipped_tracker] if self.skipped_tracker is not None else []),
        ]

    # ----------------------------------------------------------------------------------------------- losses
    @staticmethod
    def _replica_count() -> int:
        return tf.distribute.get_strategy().num_replicas_in_sync

    def _reduce(self, loss: tf.Tensor, example_weights: Optional[tf.Tensor]) -> tf.Tensor:
        """Per-example [N] -> gated average over the global batch; scalar -> divided by the replica count."""
        loss = tf.cast(loss, tf.float32)
        if loss.shape.rank == 0:
            return loss / self._replica_count()
        if example_weights is not None:
            loss = loss * example_weights
        return tf.nn.compute_average_loss(loss)

    def _adversary_phase(self, context: StepContext) -> None:
        """Updates each adversary branch on stop-gradient features with its own optimizer."""
        stopped = context.with_stopped_features()
        for branch in self.branches:
            if not branch.has_adversary or branch.name not in self.active_plugins:
                continue
            variables = branch.adversary_variables()
            with tf.GradientTape() as tape:
                loss = branch.adversary_loss(stopped)
                reduced = branch.optimizer.scale_loss(self._reduce(loss, None))
            gradients = tape.gradient(reduced, variables)
            branch.optimizer.apply(gradients, variables)
            self.adversary_trackers[branch.name].update_state(tf.reduce_mean(loss))

    def _track(self, tracker: keras.metrics.Mean, value: tf.Tensor) -> None:
        tracker.update_state(tf.reduce_mean(tf.cast(value, tf.float32)))

    # ----------------------------------------------------------------------------------------------- steps
    @staticmethod
    def _unpack(data):
        """The pipeline's dict batch, whether it came from `fit` (the dict) or `train_on_batch` (x, y, weight)."""
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return batch, batch["image"], tf.cast(batch["label"], tf.int32)

    def train_step(self, data):
        data, images, labels = self._unpack(data)
        step = self.optimizer.iterations
        main_variables = self._main_variables()
        own_optimizer_branches = [  # an inactive branch (a stage without it) gets no gradient: its optimizer rests
            b for b in self.branches if b.optimizer is not None and b.name in self.active_plugins
        ]
        branch_variables = [list(b.cooperative_variables()) for b in own_optimizer_branches]
        sharded_variables = list(getattr(self.head, "sharded_variables", ()))
        with tf.GradientTape() as tape:
            tape.watch(sharded_variables)
            features = self.backbone(images, training=True)
            context = StepContext(batch=data, features=features, labels=labels, head=self.head, step=step)
            with tape.stop_recording():
                self._adversary_phase(context)
            example_weights = None if self.gate is None else tf.cast(self.gate.weights_for(context), tf.float32)
            if example_weights is not None and self.gate.scope == "backbone":
                context.features = gate_backbone_gradient(features, example_weights)
                example_weights = None  # the losses count whole: the gate acts on the backbone's gradient only
            context.head_outputs = self.head(context.features["embedding"], labels, training=True)
            targets = context.head_outputs.get("targets", labels)
            identity_loss = keras.losses.sparse_categorical_crossentropy(
                targets, context.head_outputs["logits"], from_logits=True
            )
            total = self._reduce(identity_loss, example_weights) if self.identity_loss_enabled else tf.zeros(())
            for plugin in self._active():
                plugin_loss = plugin.loss(context)
                if plugin_loss is None:
                    continue
                total += plugin.loss_weight(step) * self._reduce(plugin_loss, example_weights)
                self._track(self.plugin_trackers[plugin.name], plugin_loss)
            scaled_total = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled_total, main_variables + sum(branch_variables, []) + sharded_variables)
        # every use of the main loss scale comes before the main optimizer updates it
        branch_updates, offset = [], len(main_variables)
        for branch, variables in zip(own_optimizer_branches, branch_variables):
            branch_gradients = gradients[offset : offset + len(variables)]
            branch_gradients = rescale_gradients(branch_gradients, self.optimizer, branch.optimizer)
            branch_updates.append((branch.optimizer, branch_gradients, variables))
            offset += len(variables)
        branch_slots = [None] * (offset - len(main_variables))
        gradients = self._with_part_rates(gradients, main_variables + branch_slots + sharded_variables)
        if sharded_variables:
            self.head.apply_sharded_gradients(gradients[offset:], self.optimizer)
        self.optimizer.apply(gradients[: len(main_variables)], main_variables)
        for optimizer, branch_gradients, variables in branch_updates:
            if variables:
                optimizer.apply(branch_gradients, variables)
        for plugin in self._active():
            plugin.after_update(context)

        self.loss_tracker.update_state(total * self._replica_count())
        self._track(self.identity_loss_tracker, identity_loss)
        self.accuracy_tracker.update_state(targets, context.head_outputs["plain_logits"])
        self._track_plugin_logs(context)
        if self.skipped_tracker is not None:
            self.skipped_tracker.update_state(tf.reduce_sum(tf.cast(data["skipped_records"], tf.float32)))
        return self._logs(self.metrics)

    def _with_part_rates(self, gradients: List, variables: List) -> List:
        """Each backbone or head variable's gradient times its part's learning_rate_multipliers factor (variables:
        aligned with gradients, None where no factor applies)."""
        if not self.learning_rate_multipliers:
            return gradients
        factors = {id(v): self.learning_rate_multipliers.get(part, 1.0)
                   for part in ("backbone", "head") for v in getattr(self, part).weights}
        factors.update({id(v): self.learning_rate_multipliers.get("head", 1.0)
                        for v in getattr(self.head, "sharded_variables", ())})
        scaled = []
        for gradient, variable in zip(gradients, variables):
            factor = factors.get(id(variable), 1.0) if variable is not None else 1.0
            scaled.append(gradient if gradient is None or factor == 1.0 else gradient * factor)
        return scaled

    @staticmethod
    def _logs(metrics) -> Dict[str, tf.Tensor]:
        """The metrics' results; shape [1] under MultiWorkerMirroredStrategy, where Keras averages a step's logs
        over the replicas with reduce(MEAN, axis=0), which fails on scalars (tensorflow/tensorflow#72388)."""
        logs = {metric.name: metric.result() for metric in metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _track_plugin_logs(self, context: StepContext) -> None:
        for source in self._log_sources():
            for name, value in source.logs(context).items():
                self._track(self.extra_trackers[name], value)

    def test_step(self, data):
        _, images, labels = self._unpack(data)
        embeddings = self.backbone(images, training=False)["embedding"]
        head_outputs = self.head(embeddings, labels, training=False)
        targets = head_outputs.get("targets", labels)
        identity_loss = keras.losses.sparse_categorical_crossentropy(targets, head_outputs["logits"], from_logits=True)
        self._track(self.identity_loss_tracker, identity_loss)
        self.loss_tracker.update_state(tf.reduce_mean(identity_loss))
        self.accuracy_tracker.update_state(targets, head_outputs["plain_logits"])
        return self._logs((self.loss_tracker, self.identity_loss_tracker, self.accuracy_tracker))
