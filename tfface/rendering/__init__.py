"""Differentiable camera geometry for 3D-BERL: rotations, pinhole camera, normals, Lambertian shading, view warp."""
from tfface.rendering.camera import intrinsics_from_fov, pixel_grid, project, rays, unproject
from tfface.rendering.normals import normals_from_depth
from tfface.rendering.rotation import euler_to_matrix
from tfface.rendering.sampling import bilinear_sample
from tfface.rendering.shading import lambertian, light_direction, shading_map
from tfface.rendering.viewpoint import to_canonical, to_view
from tfface.rendering.warp import canonical_to_view_pixels, source_coordinates, warp_to_view

__all__ = [
    "bilinear_sample",
    "canonical_to_view_pixels",
    "euler_to_matrix",
    "intrinsics_from_fov",
    "lambertian",
    "light_direction",
    "normals_from_depth",
    "pixel_grid",
    "project",
    "rays",
    "shading_map",
    "source_coordinates",
    "to_canonical",
    "to_view",
    "unproject",
    "warp_to_view",
]
