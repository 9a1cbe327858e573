"""PartialFCHead: insightface's Partial FC (v2) with the class centres sharded across replicas.

Each training step, on each replica r of R (MirroredStrategy, or R = 1):
1. the embeddings [n, D] and labels [n] of every replica are all-gathered into the global batch [N, D], [N];
2. replica r owns the centres of classes [start_r, start_r + count_r) (count_r = C // R, plus one for the first
   C % R replicas) as one shard [ceil(C / R), D] of a per-replica variable, never all-reduced;
3. it samples k = min(ceil(C / R), max(ceil(sample_rate * ceil(C / R)), N)) of its centres: every class of the
   global batch that it owns (a positive) and random others (PartialFC v2's `sample`; k >= N so that every
   positive fits);
4. it computes the cosines of the global batch with its sampled centres and the margin head's logits (target
   column through the margin maths, e.g. ArcFace's s cos(theta_y + m); other columns s cos theta_j), in float32;
5. the softmax over all replicas' sampled classes is assembled with differentiable collectives (all-reduce of the
   sums of exp(logit - max) over the non-target classes and of the target logit), so each replica ends with
   "collapsed" logits for its own n examples: [target logit, logsumexp of the sampled non-target logits].
   Cross entropy of these with target column 0 is exactly the cross entropy over all sampled classes, and its
   gradient reaches every shard and every replica's embeddings through the collectives' gradients.
The trainer reads the label column from the "targets" output and updates each shard with
`apply_sharded_gradients` (the main SGD's rule on this replica's rows only). At sample_rate 1.0 the loss and the
gradients are those of the full margin head. Outside training (training=False) every centre is used.
"""
import math
from typing import Dict, List, Tuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfface.heads.base import MarginHead, l2_normalize
from tfface.heads.margins import MARGINS, margin_logits

PARTIAL_FC_MARGINS = tuple(MARGINS.available())
"""Margin heads whose maths Partial FC can apply to sampled logits: the stateless ones (tfface.heads.margins)."""

_SEED_STRIDE = 1 << 16
"""Replica r samples from the stateless stream (step, seed * _SEED_STRIDE + r)."""
_CHUNK_VALUES = 1 << 21
"""Shard rows are initialised and updated in blocks of this many values (8 MiB of float32), so the temporaries of
a step (a few per block) stay small next to a shard of millions of centres; smaller blocks cost no measurable time."""


class PartialFCHead(MarginHead):
    """Partial FC over `num_classes` classes with the margin of `margin_head` (one of PARTIAL_FC_MARGINS).

    sample_rate: fraction in (0, 1] of each replica's centres used per training step (positives always included).
    margin_options: hyper-parameters of the margin head, e.g. {"scale": 64.0, "margin": 0.5} for ArcFace.
    kernel_initializer: initial centres, called per block of rows with shape [rows, D]: use one that does not depend
      on the shape (the default N(0, 0.01), as insightface).
    seed: seeds the negative sampling (stateless; also varies with the step and the replica).

    call(embeddings [n, D], labels [n], training) -> {"logits", "plain_logits": float32 [n, 2] (target column 0,
    then the logsumexp of the sampled non-target margin logits / the largest sampled non-target plain logit),
    "targets": int32 [n] zeros, "sampled_classes": int32 [k] global ids of this replica's sampled centres, -1 for
    padding}. Labels are required. Build inside the strategy scope (FaceTrainer.build_all does).
    Only SGD (keras.optimizers.SGD, optionally loss-scaled, without clipping) trains the shards.
    The shards are per-replica variables that cannot be read as one value: use `full_kernel()` / `get_weights()`
    of this layer (checkpoints go through `save_own_variables`), not a model-wide `get_weights()`.
    """

    def __init__(
        self,
        num_classes,
        margin_head="arcface",
        sample_rate=0.1,
        margin_options=None,
        kernel_initializer=None,
        seed=0,
        **kwargs,
    ):
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(stddev=0.01)
        super().__init__(num_classes, kernel_initializer=kernel_initializer, **kwargs)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 for Partial FC, got {num_classes!r}")
        if margin_head not in PARTIAL_FC_MARGINS:
            raise ValueError(
                f"margin_head: Partial FC cannot use '{margin_head}'; available: {', '.join(PARTIAL_FC_MARGINS)}"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.margin_head = margin_head
        self.sample_rate = float(sample_rate)
        self.margin_options = dict(margin_options or {})
        self.seed = seed
        self.margin = MARGINS.build(margin_head, **self.margin_options)  # the maths only: no kernel of its own

    # ----------------------------------------------------------------------------------------------- variables
    def build(self, embedding_shape):
        embedding_dim = embedding_shape[-1]
        if len(embedding_shape) != 2 or embedding_dim is None:
            raise ValueError(f"{self.name}: embeddings must have shape [N, D] with D known, got {embedding_shape}")
        self.strategy = tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        single_host = (tf.distribute.MirroredStrategy, tf.distribute.OneDeviceStrategy)
        if tf.distribute.has_strategy() and not isinstance(self.strategy, single_host):
            raise ValueError(
                f"{self.name}: Partial FC shards class centres over the replicas of one host (MirroredStrategy); "
                f"got {type(self.strategy).__name__}"
            )
        self.embedding_dim = int(embedding_dim)
        self.shard_size = -(-self.num_classes // self.replicas)
        self.centres = self._shard_variable("centres")
        self.momentum = self._shard_variable("momentum")
        self.sampling_step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, aggregation="only_first_replica",
            name="sampling_step",
        )
        self.chunk_rows = max(1, _CHUNK_VALUES // self.embedding_dim)
        for replica, shard in enumerate(self._shards(self.centres)):
            _, count = self.class_range(replica)
            for start in range(0, count, self.chunk_rows):
                end = min(start + self.chunk_rows, count)
                shard[start:end].assign(self.kernel_initializer((end - start, self.embedding_dim), dtype="float32"))

    def _shard_variable(self, name):
        """A [shard_size, D] float32 variable with one independent copy per replica (on-read, not aggregated)."""
        return keras.Variable(
            initializer="zeros", shape=(self.shard_size, self.embedding_dim), dtype="float32", trainable=False,
            synchronization="on_read", aggregation="none", name=name,
        )

    def _shards(self, variable) -> List[tf.Variable]:
        """The per-replica copies of a shard variable, replica 0 first."""
        return list(self.strategy.experimental_local_results(variable.value))

    def class_range(self, replica: int) -> Tuple[int, int]:
        """(first class id, number of classes) owned by `replica`: C // R each, one more for the first C % R."""
        base, extra = divmod(self.num_classes, self.replicas)
        return replica * base + min(replica, extra), base + int(replica < extra)

    @property
    def sharded_variables(self) -> List[tf.Variable]:
        """The per-replica centre shards whose gradients the trainer hands to `apply_sharded_gradients`."""
        return [self.centres.value]

    def full_kernel(self) -> np.ndarray:
        """All class centres as one float32 array [D, C] (the layout of a full head's `kernel`)."""
        return self._gather_shards(self.centres).T

    def set_full_kernel(self, kernel) -> None:
        """Loads centres [D, C] (e.g. a full head's kernel) into the shards."""
        kernel = np.asarray(kernel, np.float32)
        if kernel.shape != (self.embedding_dim, self.num_classes):
            raise ValueError(
                f"{self.name}: kernel must have shape {(self.embedding_dim, self.num_classes)}, got {kernel.shape}"
            )
        self._scatter_shards(self.centres, kernel.T)

    def _gather_shards(self, variable) -> np.ndarray:
        """[C, D] from the shards, padding rows dropped."""
        shards = [shard.numpy()[: self.class_range(r)[1]] for r, shard in enumerate(self._shards(variable))]
        return np.concatenate(shards, axis=0)

    def _scatter_shards(self, variable, rows: np.ndarray) -> None:
        """Inverse of `_gather_shards`: rows [C, D] split over the shards, padding rows zero."""
        for replica, shard in enumerate(self._shards(variable)):
            start, count = self.class_range(replica)
            shard.assign(np.pad(rows[start : start + count], ((0, self.shard_size - count), (0, 0))))

    def get_weights(self):
        """[centres [D, C], momentum [D, C], sampling step]; shards joined in class order."""
        return [self.full_kernel(), self._gather_shards(self.momentum).T, np.asarray(self.sampling_step.numpy())]

    def set_weights(self, weights):
        if len(weights) != 3:
            raise ValueError(f"{self.name}: expected 3 arrays (centres, momentum, sampling step), got {len(weights)}")
        centres, momentum, step = weights
        self.set_full_kernel(centres)
        momentum = np.asarray(momentum, np.float32)
        if momentum.shape != (self.embedding_dim, self.num_classes):
            raise ValueError(f"{self.name}: momentum must have shape {(self.embedding_dim, self.num_classes)}")
        self._scatter_shards(self.momentum, momentum.T)
        self.sampling_step.assign(int(step))

    def save_own_variables(self, store):
        for index, value in enumerate(self.get_weights()):
            store[str(index)] = value

    def load_own_variables(self, store):
        self.set_weights([store[str(index)] for index in range(3)])

    # ----------------------------------------------------------------------------------------------- forward
    def call(self, embeddings, labels=None, training=None):
        if labels is None:
            raise ValueError(f"{self.name}: Partial FC needs labels (its logits cover the classes sampled for them)")
        embeddings = ops.cast(embeddings, "float32")
        labels = self._checked_labels(labels)
        context = tf.distribute.get_replica_context()
        if context is None:
            raise ValueError(f"{self.name}: call it in replica context (inside strategy.run or fit)")
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
        all_embeddings, all_labels, offset = self._gather_batch(context, embeddings, labels)
        local_count = tf.shape(labels)[0]

        ranges = tf.constant([self.class_range(r) for r in range(self.replicas)], tf.int32)
        start, count = ranges[replica, 0], ranges[replica, 1]
        local_labels = all_labels - start
        owned = tf.logical_and(local_labels >= 0, local_labels < count)
        sampled = self._sample(local_labels, owned, count, replica) if training else tf.range(self.shard_size)
        valid = sampled < count
        label_column = tf.searchsorted(sampled, tf.where(owned, local_labels, 0))
        columns = tf.range(tf.shape(sampled)[0])
        is_target = tf.logical_and(owned[:, None], tf.equal(columns[None, :], label_column[:, None]))

        centres = tf.gather(self.centres.value, sampled)
        cosine = ops.matmul(l2_normalize(all_embeddings, axis=1), ops.transpose(l2_normalize(centres, axis=1)))
        logits, plain_logits = margin_logits(cosine, is_target, self.margin.logit_scale(all_embeddings),
                                             self.margin.target_cosine)

        negative = tf.logical_and(valid[None, :], tf.logical_not(is_target))
        collapsed, collapsed_plain = self._collapse(context, logits, plain_logits, is_target, negative)
        rows = tf.range(offset, offset + local_count)
        return {
            "logits": tf.gather(collapsed, rows),
            "plain_logits": tf.gather(collapsed_plain, rows),
            "targets": tf.zeros_like(labels),
            "sampled_classes": tf.where(valid, sampled + start, -1),
        }

    def _gather_batch(self, context, embeddings, labels):
        """(all embeddings [N, D], all labels [N], row of this replica's first example in them)."""
        if self.replicas == 1:
            return embeddings, labels, tf.constant(0, tf.int32)
        sizes = context.all_gather(tf.shape(labels)[:1], axis=0)
        before = tf.range(self.replicas) < tf.cast(context.replica_id_in_sync_group, tf.int32)
        offset = tf.reduce_sum(tf.where(before, sizes, 0))
        return context.all_gather(embeddings, axis=0), context.all_gather(labels, axis=0), offset

    def sample_count(self, global_batch):
        """k, the centres each replica uses per training step for a global batch of `global_batch` (int or tensor)."""
        wanted = int(math.ceil(self.sample_rate * self.shard_size))
        if isinstance(global_batch, int):
            return min(self.shard_size, max(wanted, global_batch))
        return tf.minimum(self.shard_size, tf.maximum(wanted, global_batch))

    def _sample(self, local_labels, owned, count, replica):
        """Sorted shard rows [k]: every owned positive, then random others; padding rows only when k > count."""
        rows = tf.range(self.shard_size)
        step = tf.convert_to_tensor(self.sampling_step.value)
        seed = tf.stack([step, tf.cast(self.seed * _SEED_STRIDE + replica, tf.int64)])
        self.sampling_step.assign_add(1)
        scores = tf.random.stateless_uniform([self.shard_size], seed=seed)
        positive_rows = tf.where(owned, local_labels, 0)[:, None]
        scores = tf.tensor_scatter_nd_max(scores, positive_rows, tf.where(owned, 2.0, 0.0))
        scores = tf.where(rows < count, scores, -1.0)
        k = self.sample_count(tf.shape(local_labels)[0])
        return tf.sort(tf.math.top_k(scores, k=k, sorted=False).indices)

    def _collapse(self, context, logits, plain_logits, is_target, negative):
        """[N, 2] [target, logsumexp of negatives] margin logits and [N, 2] [target, max negative] plain logits,
        over the sampled classes of every replica (differentiable all-reduces)."""
        lowest = tf.constant(-np.inf, tf.float32)
        largest = tf.stack(
            [
                tf.reduce_max(tf.where(negative, logits, lowest), axis=1),
                tf.reduce_max(tf.where(negative, plain_logits, lowest), axis=1),
            ]
        )
        largest = tf.stop_gradient(largest)
        if self.replicas > 1:
            largest = tf.reduce_max(tf.reshape(context.all_gather(largest, axis=0), [self.replicas, 2, -1]), axis=0)
        shift = tf.where(tf.math.is_finite(largest[0]), largest[0], 0.0)
        negative_sum = tf.reduce_sum(tf.exp(tf.where(negative, logits - shift[:, None], lowest)), axis=1)
        target = tf.reduce_sum(tf.where(is_target, logits, 0.0), axis=1)
        plain_target = tf.stop_gradient(tf.reduce_sum(tf.where(is_target, plain_logits, 0.0), axis=1))
        if self.replicas > 1:
            negative_sum, target, plain_target = context.all_reduce("sum", [negative_sum, target, plain_target])
        negative_logsumexp = shift + tf.math.log(tf.maximum(negative_sum, np.finfo(np.float32).tiny))
        return tf.stack([target, negative_logsumexp], axis=1), tf.stack([plain_target, largest[1]], axis=1)

    # ----------------------------------------------------------------------------------------------- update
    def apply_sharded_gradients(self, gradients, optimizer) -> None:
        """Updates this replica's shard (replica context) with keras SGD's rule and `optimizer`'s hyper-parameters.

        gradients: [gradient of the centres shard] as the trainer's tape returned it (IndexedSlices over the
        sampled rows, of the loss times the optimizer's loss scale). Weight decay and momentum reach every row,
        as they would with the full FC: w <- w - lr wd w; m <- mu m - lr g; w <- w + m (nesterov:
        w <- w + mu m - lr g). The step is skipped where the unscaled gradient is not finite (mixed float16).
        """
        from tfface.training.precision import loss_scale, unwrapped

        (gradient,) = gradients
        if gradient is None:
            return
        sgd = self._checked_sgd(unwrapped(optimizer))
        if not isinstance(gradient, tf.IndexedSlices):
            gradient = tf.IndexedSlices(tf.convert_to_tensor(gradient), tf.range(self.shard_size))
        values = tf.cast(gradient.values, tf.float32) / loss_scale(optimizer)
        rows = tf.cast(gradient.indices, tf.int32)
        learning_rate = tf.cast(sgd.learning_rate, tf.float32)
        tf.cond(
            tf.reduce_all(tf.math.is_finite(values)),
            lambda: self._sgd_update(rows, values, learning_rate, sgd),
            lambda: tf.constant(False),
        )

    def _sgd_update(self, rows, values, learning_rate, sgd):
        """keras SGD on this replica's shard, `chunk_rows` rows at a time (read, update, write back in place), with
        the gradient rows [k, D] at `rows` [k] scattered into each block; returns True."""
        centres, momentum = self.centres.value.handle, self.momentum.value.handle
        decay = float(sgd.weight_decay or 0.0) * learning_rate
        mu = float(sgd.momentum)

        def update_block(start):
            end = tf.minimum(start + self.chunk_rows, self.shard_size)
            block = tf.range(start, end)
            inside = tf.logical_and(rows >= start, rows < end)
            gradient = tf.scatter_nd(
                tf.boolean_mask(rows, inside)[:, None] - start,
                tf.boolean_mask(values, inside),
                tf.stack([end - start, self.embedding_dim]),
            )
            weights = tf.raw_ops.ResourceGather(resource=centres, indices=block, dtype=tf.float32)
            weights = weights - weights * decay
            if mu == 0:
                weights = weights - gradient * learning_rate
            else:
                velocity = tf.raw_ops.ResourceGather(resource=momentum, indices=block, dtype=tf.float32) * mu
                velocity = velocity - gradient * learning_rate
                tf.raw_ops.ResourceScatterUpdate(resource=momentum, indices=block, updates=velocity)
                weights = weights + (velocity * mu - gradient * learning_rate if sgd.nesterov else velocity)
            tf.raw_ops.ResourceScatterUpdate(resource=centres, indices=block, updates=weights)
            return end

        tf.while_loop(lambda start: start < self.shard_size, update_block, [tf.constant(0)], parallel_iterations=1)
        return tf.constant(True)

    def _checked_sgd(self, optimizer):
        if not isinstance(optimizer, keras.optimizers.SGD):
            raise ValueError(
                f"{self.name}: Partial FC trains its centre shards with SGD; got optimizer '{type(optimizer).__name__}'"
            )
        for option in ("clipnorm", "clipvalue", "global_clipnorm", "gradient_accumulation_steps"):
            if getattr(optimizer, option, None):
                raise ValueError(f"{self.name}: Partial FC does not support optimizer.{option}")
        if optimizer.use_ema:
            raise ValueError(f"{self.name}: Partial FC does not support optimizer.use_ema")
        return optimizer

    # ----------------------------------------------------------------------------------------------- specs
    def compute_output_spec(self, embeddings, labels=None, training=None):
        rows = embeddings.shape[0]
        return {
            "logits": keras.KerasTensor((rows, 2), dtype="float32"),
            "plain_logits": keras.KerasTensor((rows, 2), dtype="float32"),
            "targets": keras.KerasTensor((rows,), dtype="int32"),
            "sampled_classes": keras.KerasTensor((None,), dtype="int32"),
        }

    def get_config(self) -> Dict:
        return {
            **super().get_config(),
            "margin_head": self.margin_head,
            "sample_rate": self.sample_rate,
            "margin_options": dict(self.margin_options),
            "seed": self.seed,
        }
