"""Auxiliary branches removed at export (APRN pose adversary, LATSE decoder, 3D-BERL bypass), registered by name."""
from tfface.branches.aprn import AdversarialPoseRegression
from tfface.branches.bypass3d import Bypass3D
from tfface.branches.frontal_decoder import FrontalDecoder
from tfface.registry import Registry

BRANCHES = Registry("branch")
BRANCHES.register("aprn")(AdversarialPoseRegression)
BRANCHES.register("bypass3d")(Bypass3D)
BRANCHES.register("frontal_decoder")(FrontalDecoder)

__all__ = ["BRANCHES", "AdversarialPoseRegression", "Bypass3D", "FrontalDecoder"]
