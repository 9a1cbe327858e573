"""Surface normals of a depth map by central differences of its unprojected grid (as Unsup3D computes them)."""
from keras import ops

from tfface.rendering.camera import unproject

# Added to |t_u x t_v|^2, which is ~(2 z / f)^4 (1e-10 at 64 px and 1 m): keeps zero-area cells finite only.
_TINY = 1e-30


def normals_from_depth(depth, K):
    """depth [N, H, W] (metres) -> [N, H, W, 3] unit normals n = t_u x t_v / |t_u x t_v|.

    t_u = X[v, u+1] - X[v, u-1] and t_v = X[v+1, u] - X[v-1, u] are central differences of the unprojected points X.
    For a surface z = f(x, y) this gives n ~ (-df/dx, -df/dy, 1): the inward normal, pointing away from the camera
    (a fronto-parallel plane has n = (0, 0, 1)); `shading.py` pairs it with a light direction of the same sign
    convention. Border pixels copy the normal of their nearest interior neighbour. Needs H, W >= 3.
    """
    points = unproject(depth, K)
    if points.shape[1] < 3 or points.shape[2] < 3:
        raise ValueError(f"depth must be at least 3x3 to take central differences, got {tuple(depth.shape)}")
    tangent_u = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
    tangent_v = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
    normals = ops.cross(tangent_u, tangent_v)
    normals = normals / ops.sqrt(ops.sum(ops.square(normals), axis=-1, keepdims=True) + _TINY)
    return ops.pad(normals, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="symmetric")
