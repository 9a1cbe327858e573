"""Lambertian shading of 3D-BERL Eq. 1: I = a (k_a + k_d max(0, <l, n>)).

Sign convention (Unsup3D's): l = normalise(l_dx, l_dy, 1) is the direction in which the light travels, from its
source into the scene, and n the inward normal from `normals_from_depth` (pointing away from the camera). Their
product equals the usual <direction to the light, outward normal>. l_dx = l_dy = 0 is light from the camera; l_dx > 0
is light travelling toward +x, i.e. coming from the image's left, which lights surfaces that face the left.
"""
from keras import ops


def light_direction(l_dx, l_dy):
    """l_dx, l_dy [N] -> [N, 3] unit light directions (l_dx, l_dy, 1) / |(l_dx, l_dy, 1)|."""
    l_dx = ops.convert_to_tensor(l_dx)
    l_dy = ops.cast(l_dy, l_dx.dtype)
    direction = ops.stack([l_dx, l_dy, ops.ones_like(l_dx)], axis=-1)
    return direction / ops.sqrt(ops.sum(ops.square(direction), axis=-1, keepdims=True))


def shading_map(normals, light_dir):
    """normals [N, H, W, 3], light_dir [N, 3] unit -> [N, H, W] diffuse shading max(0, <l, n>)."""
    normals = ops.convert_to_tensor(normals)
    if normals.shape[-1] != 3 or len(normals.shape) != 4:
        raise ValueError(f"normals must have shape [N, H, W, 3], got {tuple(normals.shape)}")
    light_dir = ops.cast(light_dir, normals.dtype)
    if tuple(light_dir.shape[1:]) != (3,):
        raise ValueError(f"light_dir must have shape [N, 3], got {tuple(light_dir.shape)}")
    return ops.relu(ops.einsum("nhwc,nc->nhw", normals, light_dir))


def lambertian(albedo, normals, ambient, diffuse, light_dir):
    """albedo [N, H, W, C], normals [N, H, W, 3], ambient k_a [N], diffuse k_d [N], light_dir [N, 3]
    -> [N, H, W, C] image a (k_a + k_d max(0, <l, n>))."""
    albedo = ops.convert_to_tensor(albedo)
    if len(albedo.shape) != 4:
        raise ValueError(f"albedo must have shape [N, H, W, C], got {tuple(albedo.shape)}")
    ambient = ops.reshape(ops.cast(ambient, albedo.dtype), (-1, 1, 1, 1))
    diffuse = ops.reshape(ops.cast(diffuse, albedo.dtype), (-1, 1, 1, 1))
    shading = shading_map(ops.cast(normals, albedo.dtype), light_dir)[..., None]
    return albedo * (ambient + diffuse * shading)
