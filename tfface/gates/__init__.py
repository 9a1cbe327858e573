"""Per-example gates (LATSE's frozen-teacher top-k gate), registered by name.

    GATES.build("teacher_topk", teacher="runs/latse_teacher", k=1)
"""
from tfface.gates.teacher_topk import TeacherTopKGate, gate_statistics
from tfface.registry import Registry

GATES = Registry("gate")
GATES.register("teacher_topk")(TeacherTopKGate)

__all__ = ["GATES", "TeacherTopKGate", "gate_statistics"]
