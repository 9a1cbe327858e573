"""How much pose a trained face model keeps (APRN, paper 000), and how it verifies across poses.

- Landmark probe (its Table 3): the backbone frozen, one landmark regressor per stage shaped as Table 1's estimator
  for that stage (the pose discriminator of tfface.branches: stride-2 Conv3x3-BN-ReLU blocks, more of them on
  shallower stages, max-pool, FC), trained with the L1 loss on some faces; its error on faces of other identities
  says how precisely each stage's features locate the landmarks (high error = little pose), also relative to the
  best constant prediction (the training faces' per-coordinate median).
- Pose probe (its ablation study): a linear SVM separating frontal from profile embeddings; held-out accuracy, with
  balanced classes (chance 0.5).
- Cross-pose verification: pairs of one frontal and one profile face (half of the same identity), 10-fold accuracy.

Faces are frontal when |yaw| <= frontal_max and profile when |yaw| >= profile_min (degrees). Landmarks are (x / w,
y / h) of the network input; the L1 error of a face is the sum of |predicted - true| over its 2M coordinates.
"""
import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tfface import runs
from tfface.backbones.blocks import STAGE_KEYS
from tfface.branches.aprn import l1_distance
from tfface.branches.mean_landmarks import symmetry_yaw
from tfface.branches.pose_discriminator import PoseDiscriminator, default_channels
from tfface.data.pipeline import make_dataset
from tfface.data.writer import read_description
from tfface.evaluation.embeddings import flip_test_embeddings, l2_normalize
from tfface.evaluation.verification import evaluate_pairs


@dataclasses.dataclass
class ProbeSet:
    """Faces for the probes: images float32 [N, H, W, 3] normalised; labels int [N]; landmarks float32 [N, M, 2] or
    None; yaw float [N] degrees (signed; from the `pose` feature, else from landmark symmetry) or None."""

    images: np.ndarray
    labels: np.ndarray
    landmarks: Optional[np.ndarray]
    yaw: Optional[np.ndarray]
    yaw_source: Optional[str]

    def subset(self, mask: np.ndarray) -> "ProbeSet":
        """The faces where `mask` [N] (bool or indices) picks."""
        landmarks = None if self.landmarks is None else self.landmarks[mask]
        yaw = None if self.yaw is None else self.yaw[mask]
        return ProbeSet(self.images[mask], self.labels[mask], landmarks, yaw, self.yaw_source)

    def images_facing_one_side(self) -> np.ndarray:
        """The images with every face of negative yaw mirrored left-right (mirroring negates yaw), so that frontal
        and profile faces can be told apart by one hyperplane whichever way the profiles look."""
        if self.yaw is None:
            raise ValueError("the faces have no yaw (neither a pose feature nor landmarks)")
        return np.where((self.yaw < 0)[:, None, None, None], self.images[:, :, ::-1], self.images)


def read_probe_set(data_dir, prefix: str = "test", image_size=None, crop_size=None, batch_size: int = 256) -> ProbeSet:
    """Every face of `data_dir/<prefix>` as the network sees it in evaluation (resized, centre-cropped)."""
    description = read_description(data_dir, prefix)
    features = [name for name in ("landmarks", "pose") if description["has"].get(name, False)]
    dataset = make_dataset(
        data_dir, prefix=prefix, batch_size=batch_size, image_size=image_size, crop_size=crop_size,
        training=False, features=features,
    )
    batches = list(dataset.as_numpy_iterator())
    arrays = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    images, labels = arrays["image"], arrays["label"]
    landmarks = arrays.get("landmarks")
    if "pose" in arrays:
        yaw, source = arrays["pose"][:, 0], "pose"
    elif landmarks is not None:
        yaw, source = symmetry_yaw(landmarks, aspect=images.shape[2] / images.shape[1]), "symmetry"
    else:
        yaw, source = None, None
    return ProbeSet(images, labels, landmarks, yaw, source)


def run_backbone(work_dir) -> Tuple[keras.Model, Optional[Sequence[int]], Optional[Sequence[int]]]:
    """A finished run's trained backbone and the (image_size, crop_size) of its config's data section, which the
    probes read faces with."""
    data = runs.read_config(work_dir)["data"]
    return runs.load_backbone(work_dir), data["image_size"], data["crop_size"]


def split_by_identity(labels, holdout: float, seed: int = 0) -> np.ndarray:
    """Boolean [N] mask of the held-out faces: all faces of round(holdout * identities) random identities."""
    labels = np.asarray(labels)
    identities = np.unique(labels)
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if len(identities) < 2:
        raise ValueError(f"splitting by identity needs at least 2 identities, got {len(identities)}")
    count = int(np.clip(round(holdout * len(identities)), 1, len(identities) - 1))
    held_out = np.random.default_rng(seed).choice(identities, size=count, replace=False)
    return np.isin(labels, held_out)


def fit_and_test_sets(
    data_dir, fit_prefix: str, prefix: str, holdout: float, seed: int = 0, image_size=None, crop_size=None
) -> Tuple[ProbeSet, ProbeSet]:
    """(faces a probe is fitted on, faces it is tested on): `fit_prefix` and `prefix` of `data_dir`, or, when they
    are the same set, its identities split (`holdout` of them tested)."""
    test = read_probe_set(data_dir, prefix, image_size, crop_size)
    if fit_prefix != prefix:
        return read_probe_set(data_dir, fit_prefix, image_size, crop_size), test
    held_out = split_by_identity(test.labels, holdout, seed)
    return test.subset(~held_out), test.subset(held_out)


def embed(backbone: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Embeddings [N, D] float32 of normalised images [N, H, W, 3], inference mode."""
    chunks = [
        backbone(images[start : start + batch_size], training=False)["embedding"].numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def landmark_probe(
    backbone: keras.Model,
    train: ProbeSet,
    test: ProbeSet,
    stages: Sequence[str] = STAGE_KEYS,
    width_multiplier: float = 1 / 32,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Table 3: per stage, a regressor on the frozen backbone's feature map (Table 1's widths for the stage times
    `width_multiplier`), trained on `train` with the L1 loss (Adam, learning rate decayed to 0 by a cosine),
    evaluated on `test`.

    Returns {stage: {"l1": mean L1 error per face, "relative_l1": l1 / that of the best constant, "pixel_error":
    mean |error| per coordinate in pixels of the input image, "train_l1": l1 on the training faces}}.
    """
    for name, probe_set in (("train", train), ("test", test)):
        if probe_set.landmarks is None:
            raise ValueError(f"landmark probe: the {name} faces have no landmarks")
    unknown = [stage for stage in stages if stage not in STAGE_KEYS]
    if unknown:
        raise ValueError(f"landmark probe: unknown stage(s) {unknown}; available: {', '.join(STAGE_KEYS)}")
    num_landmarks = train.landmarks.shape[1]
    median = np.median(train.landmarks, axis=0)  # the best constant prediction under L1, where the regressors start
    shapes = {name: value.shape[1:] for name, value in backbone(train.images[:1], training=False).items()}
    regressors = {}
    for stage in stages:
        keras.utils.set_random_seed(seed + STAGE_KEYS.index(stage))  # a stage's start does not depend on the others
        regressors[stage] = PoseDiscriminator(
            num_landmarks, default_channels(stage, width_multiplier), initial_landmarks=median,
            name=f"probe_{stage}",
        )
        regressors[stage].build((None, *shapes[stage]))
    variables = [variable for regressor in regressors.values() for variable in regressor.trainable_variables]
    batch_size = min(batch_size, len(train.images))
    steps_per_epoch = len(train.images) // batch_size
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=epochs * steps_per_epoch)
    optimizer = keras.optimizers.Adam(schedule)
    optimizer.build(variables)

    @tf.function
    def train_step(images, landmarks):
        features = backbone(images, training=False)
        with tf.GradientTape() as tape:
            loss = tf.add_n([
                tf.reduce_mean(l1_distance(regressor(features[stage], training=True), landmarks))
                for stage, regressor in regressors.items()
            ])
        optimizer.apply(tape.gradient(loss, variables), variables)

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(train.images))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[start : start + batch_size]
            train_step(tf.constant(train.images[batch]), tf.constant(train.landmarks[batch]))

    def errors(probe_set: ProbeSet) -> Dict[str, np.ndarray]:
        predictions = {stage: [] for stage in regressors}
        for start in range(0, len(probe_set.images), 256):
            features = backbone(probe_set.images[start : start + 256], training=False)
            for stage, regressor in regressors.items():
                predictions[stage].append(regressor(features[stage], training=False).numpy())
        return {stage: np.concatenate(values) - probe_set.landmarks for stage, values in predictions.items()}

    image_size = np.array([train.images.shape[2], train.images.shape[1]], np.float64)  # (w, h)
    test_errors, train_errors = errors(test), errors(train)
    constant_l1 = np.abs(test.landmarks - median).sum(axis=(1, 2)).mean()
    return {
        stage: {
            "l1": float(np.abs(test_errors[stage]).sum(axis=(1, 2)).mean()),
            "relative_l1": float(np.abs(test_errors[stage]).sum(axis=(1, 2)).mean() / constant_l1),
            "pixel_error": float(np.abs(test_errors[stage] * image_size).mean()),
            "train_l1": float(np.abs(train_errors[stage]).sum(axis=(1, 2)).mean()),
        }
        for stage in regressors
    }


def pose_classes(yaw, frontal_max: float = 15.0, profile_min: float = 45.0) -> np.ndarray:
    """int [N]: 0 frontal (|yaw| <= frontal_max), 1 profile (|yaw| >= profile_min), -1 in between."""
    if not 0 <= frontal_max < profile_min:
        raise ValueError(f"need 0 <= frontal_max < profile_min, got {frontal_max} and {profile_min}")
    magnitude = np.abs(np.asarray(yaw, np.float64))
    return np.where(magnitude <= frontal_max, 0, np.where(magnitude >= profile_min, 1, -1))


def _balanced(indices_by_class, rng) -> np.ndarray:
    """The same number of indices from each class (the smaller count), sampled without replacement."""
    count = min(len(indices) for indices in indices_by_class)
    return np.concatenate([rng.choice(indices, size=count, replace=False) for indices in indices_by_class])


def pose_probe(embeddings, classes, test_mask, C: float = 1.0, seed: int = 0) -> Dict[str, float]:
    """Linear SVM frontal (0) vs profile (1) on L2-normalised, standardised embeddings [N, D].

    classes: [N] from `pose_classes` (-1 ignored); test_mask: [N] bool, the held-out faces. Each split is balanced by
    sampling the larger class down. Returns {"val_accuracy", "train_accuracy", "num_train", "num_test"}.
    """
    embeddings = l2_normalize(embeddings)
    classes, test_mask = np.asarray(classes), np.asarray(test_mask, bool)
    rng = np.random.default_rng(seed)
    splits = {}
    for name, in_split in (("train", ~test_mask), ("test", test_mask)):
        by_class = [np.flatnonzero(in_split & (classes == label)) for label in (0, 1)]
        if min(len(indices) for indices in by_class) < 2:
            raise ValueError(
                f"pose probe: the {name} split needs at least 2 frontal and 2 profile faces, has "
                f"{len(by_class[0])} and {len(by_class[1])}"
            )
        splits[name] = _balanced(by_class, rng)
    classifier = make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=20000, random_state=seed))
    classifier.fit(embeddings[splits["train"]], classes[splits["train"]])

    def accuracy(picked):
        return float(np.mean(classifier.predict(embeddings[picked]) == classes[picked]))

    return {
        "val_accuracy": accuracy(splits["test"]),
        "train_accuracy": accuracy(splits["train"]),
        "num_train": int(len(splits["train"])),
        "num_test": int(len(splits["test"])),
    }


def cross_pose_pairs(labels, classes, num_pairs: int, seed: int = 0):
    """num_pairs (frontal, profile) index pairs, alternately genuine (same label) and impostor; issame [P] bool.

    classes: [N] from `pose_classes`. Genuine pairs come from identities with both a frontal and a profile face.
    """
    labels, classes = np.asarray(labels), np.asarray(classes)
    rng = np.random.default_rng(seed)
    frontal, profile = np.flatnonzero(classes == 0), np.flatnonzero(classes == 1)
    both = np.intersect1d(labels[frontal], labels[profile])
    if len(both) < 1 or len(np.unique(labels[frontal])) < 2:
        raise ValueError("cross-pose pairs need an identity with frontal and profile faces, and two identities")
    first, second, issame = [], [], []
    for index in range(num_pairs):
        if index % 2 == 0:
            identity = rng.choice(both)
            first.append(rng.choice(frontal[labels[frontal] == identity]))
            second.append(rng.choice(profile[labels[profile] == identity]))
        else:
            a = rng.choice(frontal)
            others = profile[labels[profile] != labels[a]]
            if len(others) == 0:
                raise ValueError("cross-pose pairs: no profile face of another identity")
            first.append(a)
            second.append(rng.choice(others))
        issame.append(index % 2 == 0)
    return np.array(first), np.array(second), np.array(issame)


def cross_pose_verification(
    backbone: keras.Model, probe_set: ProbeSet, classes, num_pairs: int = 600, seed: int = 0
) -> Dict[str, object]:
    """10-fold verification (insightface flip test) on frontal-profile pairs; `evaluate_pairs`' numbers."""
    first, second, issame = cross_pose_pairs(probe_set.labels, classes, num_pairs, seed)
    used, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)

    def embed_fn(batch):
        return backbone(batch, training=False)["embedding"].numpy()

    embeddings = flip_test_embeddings(embed_fn, probe_set.images[used])[inverse]
    return evaluate_pairs(embeddings[: len(first)], embeddings[len(first) :], issame, n_folds=10)
