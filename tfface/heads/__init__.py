"""Margin heads: layers that own the class-centre matrix W and map (embeddings, labels) to logits."""
from tfface.heads.arcface import ArcFaceHead
from tfface.heads.base import MarginHead
from tfface.heads.combined import CombinedMarginHead
from tfface.heads.cosface import CosFaceHead
from tfface.heads.curricularface import CurricularFaceHead
from tfface.heads.linearface import LinearFaceHead
from tfface.heads.lsoftmax import LSoftmaxHead
from tfface.heads.normface import NormFaceHead
from tfface.heads.partial_fc import PartialFCHead
from tfface.heads.softmax import SoftmaxHead
from tfface.heads.sphereface import SphereFaceHead
from tfface.registry import Registry

HEADS = Registry("head")
HEADS.register("softmax")(SoftmaxHead)
HEADS.register("normface")(NormFaceHead)
HEADS.register("sphereface")(SphereFaceHead)
HEADS.register("lsoftmax")(LSoftmaxHead)
HEADS.register("cosface")(CosFaceHead)
HEADS.register("arcface")(ArcFaceHead)
HEADS.register("combined")(CombinedMarginHead)
HEADS.register("curricularface")(CurricularFaceHead)
HEADS.register("linearface")(LinearFaceHead)
HEADS.register("partial_fc")(PartialFCHead)


def available():
    """Registered head names, sorted."""
    return HEADS.available()


def get_head(name, num_classes, **options) -> MarginHead:
    """The head `name` for `num_classes` classes; `options` are its hyper-parameters (ValueError on unknown ones)."""
    return HEADS.build(name, num_classes=num_classes, **options)


__all__ = [
    "HEADS",
    "MarginHead",
    "ArcFaceHead",
    "CombinedMarginHead",
    "CosFaceHead",
    "CurricularFaceHead",
    "LinearFaceHead",
    "LSoftmaxHead",
    "NormFaceHead",
    "PartialFCHead",
    "SoftmaxHead",
    "SphereFaceHead",
    "available",
    "get_head",
]
