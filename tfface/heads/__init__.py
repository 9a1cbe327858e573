"""Margin heads: layers that own the class-centre matrix W and map (embeddings, labels) to logits."""
from tfface.heads.arcface import ArcFaceHead
from tfface.heads.base import MarginHead
from tfface.heads.softmax import SoftmaxHead
from tfface.registry import Registry

HEADS = Registry("head")
HEADS.register("softmax")(SoftmaxHead)
HEADS.register("arcface")(ArcFaceHead)


def available():
    """Registered head names, sorted."""
    return HEADS.available()


def get_head(name, num_classes, **options) -> MarginHead:
    """The head `name` for `num_classes` classes; `options` are its hyper-parameters (ValueError on unknown ones)."""
    return HEADS.build(name, num_classes=num_classes, **options)


__all__ = ["HEADS", "MarginHead", "ArcFaceHead", "SoftmaxHead", "available", "get_head"]
