"""Partial FC: equal to the full margin head at sample rate 1.0 (one device and two replicas), sampled softmax at
lower rates, sharded training through FaceTrainer, checkpoints, and clear errors."""
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface import backbones
from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from tfface.heads import PartialFCHead, get_head
from tfface.training import FaceTrainer
from tfface.training.strategy import mirrored_strategy
from trainers.train import main as train_main

D = 6
INPUT_SHAPE = (16, 16, 3)
REPO = Path(__file__).resolve().parents[1]


def problem(num_classes, labels, seed=0):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(len(labels), D)).astype("float32")
    kernel = rng.normal(size=(D, num_classes)).astype("float32")
    return embeddings, kernel, np.asarray(labels, np.int32)


def cross_entropy(labels, logits):
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def full_head_loss_and_gradients(name, options, embeddings, kernel, labels, columns=None):
    """Mean cross entropy of the full head's logits (restricted to `columns` when given) and its gradients
    with respect to the embeddings and the kernel [D, C]."""
    head = get_head(name, kernel.shape[1], **options)
    head.build((None, D))
    head.kernel.assign(kernel)
    inputs = tf.constant(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        logits = head(inputs, labels, training=True)["logits"]
        targets = labels
        if columns is not None:
            logits = tf.gather(logits, columns, axis=1)
            targets = np.searchsorted(columns, labels).astype(np.int32)
        loss = tf.reduce_mean(cross_entropy(targets, logits))
    gradient_x, gradient_kernel = tape.gradient(loss, [inputs, head.kernel])
    return loss.numpy(), gradient_x.numpy(), tf.convert_to_tensor(gradient_kernel).numpy()


def partial_loss_and_gradients(head, embeddings, labels):
    """One replica: mean cross entropy of the collapsed logits and the gradients w.r.t. embeddings and the shard
    (dense [shard, D]), plus the sampled classes."""
    inputs = tf.constant(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        tape.watch(head.sharded_variables)
        out = head(inputs, labels, training=True)
        loss = tf.reduce_mean(cross_entropy(out["targets"], out["logits"]))
    gradient_x, gradient_shard = tape.gradient(loss, [inputs, *head.sharded_variables])
    return loss.numpy(), gradient_x.numpy(), tf.convert_to_tensor(gradient_shard).numpy(), out


def numpy_arcface_loss(embeddings, kernel, labels, columns, scale=64.0, margin=0.5):
    """insightface ArcFace cross entropy over the classes in `columns` (sorted), by hand in float64."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    w = kernel[:, columns] / np.linalg.norm(kernel[:, columns], axis=0, keepdims=True)
    cosine = (x.astype(np.float64) @ w.astype(np.float64)).clip(-1, 1)
    rows, targets = np.arange(len(labels)), np.searchsorted(columns, labels)
    target_cosine = cosine[rows, targets]
    with_margin = np.where(
        target_cosine > math.cos(math.pi - margin),
        np.cos(np.arccos(target_cosine) + margin),
        target_cosine - math.sin(math.pi - margin) * margin,
    )
    logits = scale * cosine
    logits[rows, targets] = scale * with_margin
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[rows, targets])


@pytest.mark.parametrize(
    "margin_head, options",
    [("arcface", {"scale": 64.0, "margin": 0.5}), ("cosface", {"scale": 30.0, "margin": 0.35}),
     ("combined", {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2})],
)
def test_rate_one_gives_the_loss_and_gradients_of_the_full_head(margin_head, options):
    embeddings, kernel, labels = problem(9, [0, 4, 8, 4, 2, 7])
    want_loss, want_x, want_kernel = full_head_loss_and_gradients(margin_head, options, embeddings, kernel, labels)
    head = PartialFCHead(9, margin_head=margin_head, sample_rate=1.0, margin_options=options)
    head.build((None, D))
    head.set_full_kernel(kernel)
    loss, gradient_x, gradient_shard, out = partial_loss_and_gradients(head, embeddings, labels)
    np.testing.assert_array_equal(out["sampled_classes"], np.arange(9))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(gradient_x, want_x, atol=1e-5)
    np.testing.assert_allclose(gradient_shard.T, want_kernel, atol=1e-5)


def test_rate_one_sharded_over_two_replicas_gives_the_full_head():
    """7 classes over 2 replicas (4 + 3, one padding row): per-example losses, embedding gradients and the shards'
    gradients equal the full ArcFace head's on the global batch of 6."""
    embeddings, kernel, labels = problem(7, [0, 3, 6, 3, 2, 5])
    want_loss, want_x, want_kernel = full_head_loss_and_gradients("arcface", {}, embeddings, kernel, labels)
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        head = PartialFCHead(7, sample_rate=1.0)
        head.build((None, D))
    head.set_full_kernel(kernel)
    assert [shard.shape for shard in head._shards(head.centres)] == [(4, D), (4, D)]

    def replica_step(local_embeddings, local_labels):
        local_embeddings = tf.identity(local_embeddings)
        with tf.GradientTape() as tape:
            tape.watch(local_embeddings)
            tape.watch(head.sharded_variables)
            out = head(local_embeddings, local_labels, training=True)
            per_example = cross_entropy(out["targets"], out["logits"])
            loss = tf.nn.compute_average_loss(per_example)
        gradient_x, gradient_shard = tape.gradient(loss, [local_embeddings, *head.sharded_variables])
        return per_example, gradient_x, tf.convert_to_tensor(gradient_shard), out["sampled_classes"]

    def split(values):
        return strategy.experimental_distribute_values_from_function(
            lambda context: values[3 * context.replica_id_in_sync_group : 3 * (context.replica_id_in_sync_group + 1)]
        )

    results = tf.function(lambda x, y: strategy.run(replica_step, args=(x, y)))(split(embeddings), split(labels))
    per_example, gradient_x, gradient_shard, sampled = [
        [value.numpy() for value in strategy.experimental_local_results(result)] for result in results
    ]
    np.testing.assert_allclose(np.concatenate(per_example).mean(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(gradient_x), want_x, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([gradient_shard[0], gradient_shard[1][:3]]).T, want_kernel, atol=1e-5)
    np.testing.assert_array_equal(gradient_shard[1][3], 0.0)
    np.testing.assert_array_equal(sampled[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(sampled[1], [4, 5, 6, -1])


def test_sampled_classes_hold_every_positive_and_fresh_random_negatives():
    labels = [1, 17, 17, 33]
    embeddings, kernel, labels = problem(40, labels)
    head = PartialFCHead(40, sample_rate=0.25)
    head.build((None, D))
    head.set_full_kernel(kernel)
    assert head.sample_count(4) == 10 and head.sample_count(16) == 16
    seen = []
    for _ in range(3):
        sampled = head(embeddings, labels, training=True)["sampled_classes"].numpy()
        assert len(sampled) == 10 and len(set(sampled)) == 10 and np.all(np.diff(sampled) > 0)
        assert {1, 17, 33} <= set(sampled)
        seen.append(tuple(sampled))
    assert len(set(seen)) == 3
    assert head(embeddings, labels, training=False)["sampled_classes"].shape == (40,)


def test_sampled_loss_and_gradients_are_the_softmax_over_the_sampled_columns():
    embeddings, kernel, labels = problem(40, [1, 17, 17, 33], seed=3)
    head = PartialFCHead(40, sample_rate=0.25)
    head.build((None, D))
    head.set_full_kernel(kernel)
    loss, gradient_x, gradient_shard, out = partial_loss_and_gradients(head, embeddings, labels)
    columns = out["sampled_classes"].numpy()
    np.testing.assert_allclose(loss, numpy_arcface_loss(embeddings, kernel, labels, columns), rtol=1e-5)
    want_loss, want_x, want_kernel = full_head_loss_and_gradients("arcface", {}, embeddings, kernel, labels, columns)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(gradient_x, want_x, atol=1e-5)
    np.testing.assert_allclose(gradient_shard.T, want_kernel, atol=1e-5)
    unsampled = np.setdiff1d(np.arange(40), columns)
    np.testing.assert_array_equal(gradient_shard[unsampled], 0.0)


def test_two_replicas_sample_their_own_classes():
    embeddings, kernel, labels = problem(41, [0, 20, 21, 40])
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        head = PartialFCHead(41, sample_rate=0.2)
        head.build((None, D))
    x, y = [
        strategy.experimental_distribute_values_from_function(lambda c: values[2 * c.replica_id_in_sync_group :][:2])
        for values in (embeddings, labels)
    ]
    sampled = strategy.run(lambda a, b: head(a, b, training=True)["sampled_classes"], args=(x, y))
    first, second = [value.numpy() for value in strategy.experimental_local_results(sampled)]
    assert head.sample_count(4) == 5 and len(first) == len(second) == 5
    assert np.all((first >= 0) & (first <= 20)) and {0, 20} <= set(first)
    assert np.all((second >= 21) & (second <= 40)) and {21, 40} <= set(second)


def make_trainer(head, num_classes=5, sync_batchnorm=False):
    backbone = backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=D, sync_batchnorm=sync_batchnorm)
    trainer = FaceTrainer(backbone, head)
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=5e-4))
    trainer.build_all(INPUT_SHAPE)
    return trainer


def make_batch(size=8, num_classes=5):
    rng = np.random.default_rng(1)
    return {
        "image": rng.normal(size=(size, *INPUT_SHAPE)).astype("float32"),
        "label": (np.arange(size) % num_classes).astype("int32"),
    }


def test_trainer_steps_with_sharded_centres_match_the_full_head():
    """Two SGD steps (momentum, weight decay) of a 2-replica trainer with Partial FC at rate 1.0 give the losses,
    backbone and class centres of a one-device trainer with the full ArcFace head."""
    batch = make_batch()
    full = make_trainer(get_head("arcface", 5), sync_batchnorm=True)
    initial_backbone = full.backbone.get_weights()
    initial_kernel = full.head.kernel.numpy()
    full_losses = [full.train_on_batch(dict(batch), return_dict=True)["loss"] for _ in range(2)]

    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        sharded = make_trainer(PartialFCHead(5, sample_rate=1.0), sync_batchnorm=True)
        sharded.backbone.set_weights(initial_backbone)
        sharded.head.set_full_kernel(initial_kernel)
    sharded.head.chunk_rows = 2  # each 3-row shard is updated in two blocks
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    history = sharded.fit(dataset, epochs=2, steps_per_epoch=1, verbose=0, shuffle=False)

    np.testing.assert_allclose(history.history["loss"], full_losses, rtol=1e-5)
    np.testing.assert_allclose(sharded.head.full_kernel(), full.head.kernel.numpy(), atol=1e-5)
    # backbone weights reach ~30 and are summed in another order over replicas: float32 rounding, relative
    for mine, theirs in zip(sharded.backbone.get_weights(), full.backbone.get_weights()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)


def test_checkpoint_round_trip_keeps_every_shard(tmp_path):
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        trainer = make_trainer(PartialFCHead(5, sample_rate=0.5))
        restored = make_trainer(PartialFCHead(5, sample_rate=0.5))
    dataset = tf.data.Dataset.from_tensors(make_batch()).repeat()
    trainer.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    path = str(tmp_path / "trainer.weights.h5")
    trainer.save_weights(path)
    restored.load_weights(path)
    centres, momentum, step = trainer.head.get_weights()
    assert centres.shape == momentum.shape == (D, 5) and int(step) == 1 and np.abs(momentum).max() > 0
    for mine, theirs in zip(restored.head.get_weights(), trainer.head.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    shards = [shard.numpy() for shard in restored.head._shards(restored.head.centres)]
    np.testing.assert_array_equal(np.concatenate([shards[0], shards[1][:2]]), centres.T)


def test_bad_options_and_unsupported_uses_are_clear_errors():
    with pytest.raises(ValueError, match="margin_head: Partial FC cannot use 'curricularface'; available: arcface"):
        PartialFCHead(10, margin_head="curricularface")
    for rate in (0, 1.5, "half"):
        with pytest.raises(ValueError, match="sample_rate must be a number in \\(0, 1\\]"):
            PartialFCHead(10, sample_rate=rate)
    with pytest.raises(ValueError, match="margn"):
        PartialFCHead(10, margin_options={"margn": 0.5})
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        PartialFCHead(1)
    head = PartialFCHead(10)
    head.build((None, D))
    with pytest.raises(ValueError, match="needs labels"):
        head(np.zeros((2, D), np.float32))
    with pytest.raises(ValueError, match="kernel must have shape \\(6, 10\\)"):
        head.set_full_kernel(np.zeros((D, 9)))
    trainer = FaceTrainer(backbones.get_backbone("tiny", input_shape=INPUT_SHAPE, embedding_size=D), PartialFCHead(5))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.build_all(INPUT_SHAPE)
    with pytest.raises(ValueError, match="trains its centre shards with SGD; got optimizer 'Adam'"):
        trainer.train_on_batch(make_batch())


def test_shipped_partial_fc_fp16_config_trains_through_the_cli(tmp_path):
    """arcface_partial_fc_fp16.yaml with a tiny backbone and data: 2 replicas (the test's logical CPUs), loss
    scaling, sharded centres; the work dir's head.weights.npz holds the joined centres [D, C]."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    with ShardedTFRecordWriter(data, prefix="train", examples_per_shard=16) as writer:
        for index in range(32):
            writer.write(make_example(rng.integers(0, 255, size=(20, 20, 3)).astype(np.uint8), index % 6))
    overrides = [
        "backbone.name=tiny", f"backbone.options={{embedding_size: {D}}}", f"data.train={data}",
        "data.image_size=[16, 16]", "data.shuffle_buffer=32", "train.epochs=1", "train.steps_per_epoch=2",
        "train.batch_size=8", "train.verbose=2", "schedule.warmup_epochs=0", f"work_dir={tmp_path / 'run'}",
    ]
    config = str(REPO / "trainers" / "configs" / "arcface_partial_fc_fp16.yaml")
    assert train_main(["--config", config, *[item for o in overrides for item in ("--set", o)]]) == 0
    with np.load(tmp_path / "run" / "head.weights.npz") as archive:
        assert archive["arr_0"].shape == archive["arr_1"].shape == (D, 6) and int(archive["arr_2"]) == 2
        assert np.all(np.isfinite(archive["arr_0"]))


def test_a_stopped_partial_fc_run_resumes_with_its_shards(tmp_path):
    """arcface_partial_fc.yaml on 2 replicas through the CLI: 1 epoch, then the same run asked for 2 continues from
    the backup (per-replica centre shards, momentum and the sampling step included) instead of starting again."""
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    with ShardedTFRecordWriter(data, prefix="train", examples_per_shard=16) as writer:
        for index in range(32):
            writer.write(make_example(rng.integers(0, 255, size=(20, 20, 3)).astype(np.uint8), index % 6))
    overrides = [
        "backbone.name=tiny", f"backbone.options={{embedding_size: {D}}}", f"data.train={data}",
        "data.image_size=[16, 16]", "data.shuffle_buffer=32", "train.steps_per_epoch=2", "train.batch_size=8",
        "train.verbose=2", "schedule.warmup_epochs=0", "head.options.sample_rate=0.5", f"work_dir={tmp_path / 'run'}",
    ]
    config = str(REPO / "trainers" / "configs" / "arcface_partial_fc.yaml")

    def run(epochs):
        argv = ["--config", config, *[item for o in [*overrides, f"train.epochs={epochs}"] for item in ("--set", o)]]
        assert train_main(argv) == 0
        with np.load(tmp_path / "run" / "head.weights.npz") as archive:
            return archive["arr_0"], archive["arr_1"], int(archive["arr_2"])

    centres_1, momentum_1, step_1 = run(1)
    assert step_1 == 2 and np.abs(momentum_1).max() > 0
    centres_2, _, step_2 = run(2)
    assert step_2 == 4  # the sampling step went on from the backup's 2
    rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,") and rows[2].startswith("2,"), rows
    assert centres_2.shape == centres_1.shape and not np.array_equal(centres_2, centres_1)
