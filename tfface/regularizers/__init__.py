"""Regularizers (center loss, center invariant loss, exclusive regularization) registered by name.

    REGULARIZERS.build("center", weight=0.008, alpha=0.5)           # Wen et al. 2016
    REGULARIZERS.build("center_invariant", weight=0.001)            # paper 003
    REGULARIZERS.build("exclusive", weight=1.0, warmup_steps=500)   # paper 004 (RegularFace)
"""
from tfface.registry import Registry
from tfface.regularizers.center import CenterLoss
from tfface.regularizers.center_invariant import CenterInvariantLoss
from tfface.regularizers.exclusive import ExclusiveRegularizer, exclusive_term

REGULARIZERS = Registry("regularizer")
REGULARIZERS.register("center")(CenterLoss)
REGULARIZERS.register("center_invariant")(CenterInvariantLoss)
REGULARIZERS.register("exclusive")(ExclusiveRegularizer)

__all__ = ["REGULARIZERS", "CenterInvariantLoss", "CenterLoss", "ExclusiveRegularizer", "exclusive_term"]
