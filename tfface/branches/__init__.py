"""Auxiliary branches removed at export (APRN pose adversary, LATSE decoder, 3D-BERL bypass), registered by name."""
from tfface.registry import Registry

BRANCHES = Registry("branch")
