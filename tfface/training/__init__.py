"""The composable FaceTrainer, its plug-in interfaces, config, schedules and callbacks."""
from tfface.training.plugins import Branch, Gate, LossWeight, Regularizer, StepContext
from tfface.training.trainer import FaceTrainer

__all__ = ["Branch", "FaceTrainer", "Gate", "LossWeight", "Regularizer", "StepContext"]
