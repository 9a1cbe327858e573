"""Periodic verification during training: 10-fold accuracy on an LFW-layout pairs folder, logged per epoch."""
import os
from typing import Dict, Optional, Tuple

import keras
import numpy as np

from tfface.data.pipeline import normalize_images
from tfface.evaluation import evaluate_pairs, flip_test_embeddings, load_images, read_lfw_pairs


def verify_backbone(
    backbone: keras.Model, pairs_dir: str, image_size: Optional[Tuple[int, int]] = None, batch_size: int = 64,
    images: Optional[Dict[str, np.ndarray]] = None,
) -> Dict[str, object]:
    """Embeds the pairs of `pairs_dir/pairs.txt` (images in `pairs_dir/<name>/`) with the flip test (sum, as
    insightface) and returns `evaluate_pairs`' numbers. image_size: (H, W), default the backbone's input size.
    `images` optionally caches decoded uint8 images by path across calls."""
    pairs = read_lfw_pairs(os.path.join(pairs_dir, "pairs.txt"), pairs_dir)
    image_size = tuple(image_size or backbone.input_shape[1:3])
    unique = sorted(set(pairs.paths1) | set(pairs.paths2))
    if images is None:
        images = {}
    missing = [path for path in unique if path not in images]
    if missing:
        images.update(zip(missing, load_images(missing, image_size)))

    def embed(batch: np.ndarray) -> np.ndarray:
        return backbone(normalize_images(batch), training=False)["embedding"].numpy()

    embeddings = flip_test_embeddings(embed, np.stack([images[path] for path in unique]), batch_size=batch_size)
    index = {path: row for row, path in enumerate(unique)}
    first = embeddings[[index[path] for path in pairs.paths1]]
    second = embeddings[[index[path] for path in pairs.paths2]]
    return evaluate_pairs(first, second, pairs.issame, folds=pairs.folds)


class VerificationCallback(keras.callbacks.Callback):
    """Every `every_epochs` epochs, adds `<name>_accuracy`, `<name>_accuracy_std` and `<name>_auc` to the logs
    (so history.csv, TensorBoard and the progress line show them); the epochs in between log nothing of it."""

    def __init__(self, pairs_dir: str, name: str = "verification", every_epochs: int = 1,
                 image_size: Optional[Tuple[int, int]] = None, batch_size: int = 64):
        super().__init__()
        if not os.path.isfile(os.path.join(pairs_dir, "pairs.txt")):
            raise FileNotFoundError(f"evaluation.pairs_dir: no pairs.txt in '{pairs_dir}'")
        self.pairs_dir = pairs_dir
        self.name = name
        self.every_epochs = max(int(every_epochs), 1)
        self.image_size = image_size
        self.batch_size = batch_size
        self._images: Dict[str, np.ndarray] = {}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if (epoch + 1) % self.every_epochs:
            return
        result = verify_backbone(
            self.model.backbone, self.pairs_dir, self.image_size, self.batch_size, images=self._images
        )
        logs[f"{self.name}_accuracy"] = float(result["accuracy_mean"])
        logs[f"{self.name}_accuracy_std"] = float(result["accuracy_std"])
        logs[f"{self.name}_auc"] = float(result["auc"])
