"""LATSE's generative frontal decoder (paper 001, Sec. 3.2 and Algorithm 1), registered as branch "frontal_decoder".

The decoder maps the student's embedding back to a face image; its target for an example of class c is the class's
momentum mean image y_c (Eq. 12), so the embedding must keep enough information to draw the frontal face:

    x_gen = decoder(embedding)                                  reversed ResNet-18, transposed-conv up-sampling
    GLoss = L1(x_gen, y_c) + (1 - SSIM(x_gen, y_c)) / 2         Eq. 13-14, per example, pixels in [0, 1]
    y_c  <- (1 - mu) mean_{i: y_i = c} x_i + mu y_c             Eq. 12, after each optimizer step

GLoss is a per-example loss added to the identity loss (Eq. 15). Under the teacher gate's default scope the decoder
learns from every example (`genNet.backward(GLoss)` in Algorithm 1 is outside the top-k test) and only the gradient
into the backbone is filtered; scope "losses" gates GLoss with DLoss. An example whose class has no bank image yet
contributes no GLoss.

The bank: a non-trainable variable [C, h, w, 3] of normalised images ((pixel - 127.5) / 128) at the decoder's
`image_size`, plus a 0/1 "seen" flag per class. Each step moves every class of the GLOBAL batch once, towards the mean
of its examples there (the first time, the bank row becomes that mean). Every replica sends its (label, image) pairs
through one all-reduce of `tf.IndexedSlices` (a gather: its size grows with the batch, not with C), computes the same
update, and the variables are created with aggregation="only_first_replica", so the bank is identical on all replicas
and equals a single device's on the same global batch.

The decoder and the bank live in the branch, not in the backbone: an export of the backbone carries neither.
"""
from typing import Dict, List, Optional, Sequence

import keras
import tensorflow as tf

from tfface.backbones.blocks import batch_norm
from tfface.training.plugins import Branch, StepContext

RESNET18_CHANNELS = (512, 256, 128, 64)
RESNET18_BLOCKS_PER_STAGE = 2


def _conv_bn(x, channels: int, name: str, sync_batchnorm: bool, transposed_stride: int = 1, kernel_size: int = 3):
    """3x3 conv (or a transposed conv up-sampling by `transposed_stride`) without bias, then batch norm."""
    if transposed_stride > 1:
        conv = keras.layers.Conv2DTranspose(
            channels, kernel_size, strides=transposed_stride, padding="same", use_bias=False, name=f"{name}_deconv"
        )
    else:
        conv = keras.layers.Conv2D(channels, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")
    return batch_norm(f"{name}_bn", sync_batchnorm)(conv(x))


def _basic_block(x, channels: int, upsample: bool, name: str, sync_batchnorm: bool):
    """ResNet's basic block run backwards: the first conv is a stride-2 transposed conv when `upsample`, and the
    shortcut is then a 1x1 stride-2 transposed conv with batch norm (ResNet's down-sampling shortcut reversed)."""
    stride = 2 if upsample else 1
    residual = _conv_bn(x, channels, f"{name}_a", sync_batchnorm, transposed_stride=stride)
    residual = keras.layers.ReLU(name=f"{name}_a_relu")(residual)
    residual = _conv_bn(residual, channels, f"{name}_b", sync_batchnorm)
    shortcut = x
    if upsample or x.shape[-1] != channels:
        shortcut = _conv_bn(x, channels, f"{name}_shortcut", sync_batchnorm, transposed_stride=stride, kernel_size=1)
    merged = keras.layers.Add(name=f"{name}_add")([residual, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(merged)


def reversed_resnet18(
    embedding_size: int,
    image_size: Sequence[int],
    channels: Sequence[int] = RESNET18_CHANNELS,
    blocks_per_stage: int = RESNET18_BLOCKS_PER_STAGE,
    sync_batchnorm: bool = False,
    name: str = "frontal_decoder",
) -> keras.Model:
    """Embedding [N, D] -> image [N, h, w, 3] in (-1, 1) (the normalised pixel range).

    FC to a (h / 2^S) x (w / 2^S) x channels[0] map (S = len(channels)), BN, ReLU; then S stages of
    `blocks_per_stage` basic blocks, each stage doubling the size in its first block with a transposed conv
    (ResNet-18 backwards: channels 512, 256, 128, 64, two blocks each); a 3x3 conv to RGB and tanh (float32).
    """
    height, width = (int(size) for size in image_size)
    scale = 2 ** len(channels)
    if not channels or height % scale or width % scale:
        raise ValueError(
            f"{name}: image_size {height}x{width} must be divisible by 2^{len(channels)} = {scale} "
            f"(one up-sampling per entry of channels {list(channels)})"
        )
    if int(blocks_per_stage) < 1:
        raise ValueError(f"{name}: blocks_per_stage must be a positive integer, got {blocks_per_stage!r}")
    embedding = keras.Input((embedding_size,), name="embedding")
    x = keras.layers.Dense((height // scale) * (width // scale) * channels[0], use_bias=False, name="fc")(embedding)
    x = keras.layers.Reshape((height // scale, width // scale, channels[0]), name="fc_reshape")(x)
    x = keras.layers.ReLU(name="fc_relu")(batch_norm("fc_bn", sync_batchnorm)(x))
    for stage, stage_channels in enumerate(channels, start=1):
        for block in range(1, int(blocks_per_stage) + 1):
            x = _basic_block(x, stage_channels, block == 1, f"stage{stage}_block{block}", sync_batchnorm)
    x = keras.layers.Conv2D(3, 3, padding="same", name="to_rgb")(x)
    image = keras.layers.Activation("tanh", dtype="float32", name="image")(x)
    return keras.Model(embedding, image, name=name)


def to_unit_pixels(images: tf.Tensor) -> tf.Tensor:
    """Normalised images (pixel - 127.5) / 128 -> float32 pixel / 255 (about [0, 1]), same shape."""
    return (tf.cast(images, tf.float32) * 128.0 + 127.5) / 255.0


def generative_loss(generated: tf.Tensor, target: tf.Tensor, ssim_filter_size: int = 11) -> tf.Tensor:
    """GLoss (Eq. 14) per example: mean |x_gen - y| + (1 - SSIM(x_gen, y)) / 2, both in pixel / 255 units.

    generated, target: normalised images [N, h, w, 3]; returns float32 [N]. SSIM is `tf.image.ssim` (Gaussian window
    of `ssim_filter_size` pixels, sigma 1.5, K1 0.01, K2 0.03, averaged over positions and channels), max value 1.
    """
    generated, target = to_unit_pixels(generated), to_unit_pixels(target)
    l1 = tf.reduce_mean(tf.abs(generated - target), axis=[1, 2, 3])
    ssim = tf.image.ssim(generated, target, max_val=1.0, filter_size=ssim_filter_size)
    return l1 + (1.0 - ssim) / 2.0


def momentum_mean_update(rows: tf.Tensor, seen: tf.Tensor, means: tf.Tensor, momentum: float) -> tf.Tensor:
    """Eq. 12 for the classes of one step: (1 - mu) mean + mu y_c, or the mean itself for a class not seen before.

    rows, means: [P, h, w, 3]; seen: [P] 0/1 float32. Returns the new rows [P, h, w, 3].
    """
    moved = (1.0 - momentum) * means + momentum * rows
    return tf.where(seen[:, None, None, None] > 0, moved, means)


class FrontalDecoder(Branch):
    """The LATSE decoder branch; `weight` multiplies GLoss (Eq. 15 adds it with weight 1).

    image_size: (h, w) of the generated face and of the bank; the input images are resized to it (area) for the
      target. Must be divisible by 2^len(channels).
    momentum: mu of Eq. 12, in [0, 1).
    channels, blocks_per_stage: the decoder's stages (ResNet-18 backwards by default); `width_multiplier` scales
      the default channels.
    sync_batchnorm: all-reduce the decoder's batch statistics across replicas.
    ssim_filter_size: the SSIM window (at most min(h, w)).
    optimizer: the decoder's own optimizer; None trains it with the main optimizer.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (112, 112),
        momentum: float = 0.9,
        channels: Optional[Sequence[int]] = None,
        width_multiplier: float = 1.0,
        blocks_per_stage: int = RESNET18_BLOCKS_PER_STAGE,
        sync_batchnorm: bool = False,
        ssim_filter_size: int = 11,
        weight: float = 1.0,
        warmup_steps: int = 0,
        warmup_every: int = 1,
        optimizer: Optional[keras.optimizers.Optimizer] = None,
        name: str = "frontal_decoder",
    ):
        super().__init__(
            weight=weight, warmup_steps=warmup_steps, warmup_every=warmup_every, optimizer=optimizer, name=name
        )
        if len(tuple(image_size)) != 2 or min(int(size) for size in image_size) < 1:
            raise ValueError(f"{name}: image_size must be (h, w) of positive integers, got {image_size!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"{name}: momentum (mu of Eq. 12) must be in [0, 1), got {momentum!r}")
        self.image_size = tuple(int(size) for size in image_size)
        if not 1 <= int(ssim_filter_size) <= min(self.image_size):
            raise ValueError(
                f"{name}: ssim_filter_size must be in [1, {min(self.image_size)}] (the smaller side of image_size), "
                f"got {ssim_filter_size!r}"
            )
        if channels is None:
            channels = [max(1, int(round(width * width_multiplier))) for width in RESNET18_CHANNELS]
        self.channels = tuple(int(width) for width in channels)
        self.momentum = float(momentum)
        self.blocks_per_stage = blocks_per_stage
        self.sync_batchnorm = sync_batchnorm
        self.ssim_filter_size = int(ssim_filter_size)

    def build_for(self, features_spec: Dict[str, tuple], head: keras.layers.Layer) -> None:
        if "embedding" not in features_spec or len(features_spec["embedding"]) != 1:
            raise ValueError(f"{self.name}: needs an 'embedding' feature of shape [D], got {features_spec}")
        self.num_classes = int(head.num_classes)
        self.decoder = reversed_resnet18(
            features_spec["embedding"][0], self.image_size, self.channels, self.blocks_per_stage,
            self.sync_batchnorm, name=f"{self.name}_net",
        )
        self.bank = self.add_weight(
            shape=(self.num_classes, *self.image_size, 3), initializer="zeros", dtype="float32", trainable=False,
            aggregation="only_first_replica", name="mean_images",
        )
        self.seen = self.add_weight(
            shape=(self.num_classes,), initializer="zeros", dtype="float32", trainable=False,
            aggregation="only_first_replica", name="seen",
        )
        self.built = True

    def cooperative_variables(self) -> List[tf.Variable]:
        return list(self.decoder.trainable_variables)

    def generate(self, embeddings: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Embeddings [N, D] -> generated frontal faces [N, h, w, 3] float32, normalised pixels."""
        return tf.cast(self.decoder(embeddings, training=training), tf.float32)

    def target_images(self, images: tf.Tensor) -> tf.Tensor:
        """Batch images [N, H, W, 3] (normalised) -> float32 [N, h, w, 3] at `image_size` (area resize if needed)."""
        images = tf.cast(images, tf.float32)
        if tuple(images.shape[1:3]) == self.image_size:
            return images
        return tf.image.resize(images, self.image_size, method="area")

    def loss(self, context: StepContext) -> tf.Tensor:
        """GLoss [N] against each example's class mean image; 0 for a class without a bank image yet."""
        generated = self.generate(context.features["embedding"], training=True)
        target = tf.gather(tf.convert_to_tensor(self.bank), context.labels)
        seen = tf.gather(tf.convert_to_tensor(self.seen), context.labels)
        return seen * generative_loss(generated, target, self.ssim_filter_size)

    def after_update(self, context: StepContext) -> None:
        """Moves the bank rows of the global batch's classes by Eq. 12 (identically on every replica)."""
        images = tf.stop_gradient(self.target_images(context.batch["image"]))
        labels = tf.cast(context.labels, tf.int64)
        dense_shape = tf.constant([self.num_classes, *self.image_size, 3], tf.int64)
        gathered = tf.distribute.get_replica_context().all_reduce(
            "sum", tf.IndexedSlices(images, labels, dense_shape)
        )
        classes, slots = tf.unique(gathered.indices)
        count = tf.size(classes)
        sums = tf.math.unsorted_segment_sum(gathered.values, slots, count)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(slots, tf.float32), slots, count)
        means = sums / counts[:, None, None, None]
        rows = momentum_mean_update(
            tf.gather(tf.convert_to_tensor(self.bank), classes), tf.gather(tf.convert_to_tensor(self.seen), classes),
            means, self.momentum,
        )
        self.bank.value.scatter_update(tf.IndexedSlices(rows, classes))
        self.seen.value.scatter_update(tf.IndexedSlices(tf.ones_like(counts), classes))
