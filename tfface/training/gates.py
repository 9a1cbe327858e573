"""Per-example gates (LATSE's frozen-teacher top-k gate) registered by name."""
from tfface.registry import Registry

GATES = Registry("gate")

# Imported for their registration side effects.
from tfface.training import teacher_gate  # noqa: E402,F401
