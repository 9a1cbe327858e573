"""Regularizers (center loss, center invariant loss, exclusive regularization) registered by name."""
from tfface.registry import Registry

REGULARIZERS = Registry("regularizer")
