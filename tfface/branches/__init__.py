"""Auxiliary branches removed at export (APRN pose adversary, LATSE decoder, 3D-BERL bypass), registered by name."""
from tfface.registry import Registry

BRANCHES = Registry("branch")

# Imported for their registration side effects.
from tfface.branches.aprn import AdversarialPoseRegression  # noqa: E402
from tfface.branches import bypass3d  # noqa: E402,F401
from tfface.branches import frontal_decoder  # noqa: E402,F401
