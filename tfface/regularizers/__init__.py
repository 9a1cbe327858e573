"""Regularizers (center loss, center invariant loss, exclusive regularization) registered by name.

    REGULARIZERS.build("center", weight=0.008, alpha=0.5)           # Wen et al. 2016
    REGULARIZERS.build("center_invariant", weight=0.001)            # paper 003
    REGULARIZERS.build("exclusive", weight=1.0, warmup_steps=500)   # paper 004 (RegularFace)
"""
from tfface.registry import Registry

REGULARIZERS = Registry("regularizer")

# Imported for their registration side effects.
from tfface.regularizers.center import CenterLoss  # noqa: E402
from tfface.regularizers.center_invariant import CenterInvariantLoss  # noqa: E402
from tfface.regularizers.exclusive import ExclusiveRegularizer, exclusive_term  # noqa: E402

__all__ = ["REGULARIZERS", "CenterInvariantLoss", "CenterLoss", "ExclusiveRegularizer", "exclusive_term"]
