"""Per-example gates (LATSE's frozen-teacher top-k gate) registered by name."""
from tfface.registry import Registry

GATES = Registry("gate")
