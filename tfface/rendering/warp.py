"""Differentiable warp of a canonical image to a viewpoint (3D-BERL Eq. 2-4): p' ~ K (R (d K^-1 p - c) + c + t).

Unsup3D renders the canonical depth in the view with a mesh rasteriser, then samples the canonical image at the
inverse-warped positions. No rasteriser is available here, so the warp is a backward warp that solves, for every
target pixel p', for its canonical source pixel p with view(unproject(p, D(p))) on the ray of p'. Fixed-point
iteration on the depth z' of the target pixel in the view:

    p_0 = p'
    repeat: z'   = [view(D(p_k) K^-1 p_k)]_z        (view depth of the canonical surface point seen at p_k)
            p_k+1 = project(to_canonical(z' K^-1 p'))  (where the view point at that depth on p's ray comes from)

Its fixed point is exact: the canonical surface point at p is seen at p' in the view. It converges where the view
sees the surface at a moderate angle (for a pure yaw theta, while -D'(x) sin theta cos theta + sin^2 theta lies in
(-1, 1), D' the depth slope); pixels it does not resolve (self-occluded or grazing parts, rays missing the canonical
grid) are marked invalid. Where the surface occludes itself the iteration may pick any of the surface points on the
ray, so use it for moderate rotations (faces within about +-45 degrees of yaw). Gradients reach the canonical image,
the canonical depth, the angles and the translation through the bilinear sampling of image and depth.
"""
from keras import ops

from tfface.rendering.camera import intrinsics_from_fov, pixel_grid, project, rays
from tfface.rendering.sampling import bilinear_sample
from tfface.rendering.viewpoint import to_canonical, to_view

DEFAULT_FOV_DEGREES = 10.0


def _check_depth(canonical_depth):
    canonical_depth = ops.convert_to_tensor(canonical_depth)
    if len(canonical_depth.shape) != 3:
        raise ValueError(f"canonical_depth must have shape [N, H, W], got {tuple(canonical_depth.shape)}")
    return canonical_depth


def _default_intrinsics(K, height, width, dtype):
    if K is None:
        return intrinsics_from_fov(DEFAULT_FOV_DEGREES, height, width, dtype=dtype)
    return ops.cast(K, dtype)


def canonical_to_view_pixels(canonical_depth, rotation_angles, translation, K=None, rotation_center_depth=1.0,
                             pixels=None):
    """Forward map: where each canonical pixel is seen in the view.

    canonical_depth [N, H, W] metres; rotation_angles [N, 3] radians (pitch, yaw, roll); translation [N, 3] metres;
    pixels [N, Ho, Wo, 2] canonical pixels (u, v) to map (default: every pixel). Returns [N, Ho, Wo, 2] view pixels.
    """
    canonical_depth = _check_depth(canonical_depth)
    height, width = canonical_depth.shape[1], canonical_depth.shape[2]
    K = _default_intrinsics(K, height, width, canonical_depth.dtype)
    if pixels is None:
        pixels = ops.broadcast_to(pixel_grid(height, width, canonical_depth.dtype)[None],
                                  (ops.shape(canonical_depth)[0], height, width, 2))
    depth = bilinear_sample(canonical_depth[..., None], pixels)
    points = to_view(rays(pixels, K) * depth, rotation_angles, translation, rotation_center_depth)
    return project(points, K)


def source_coordinates(canonical_depth, rotation_angles, translation, K=None, rotation_center_depth=1.0,
                       iterations=6, tolerance_px=0.1):
    """For each view pixel, its canonical source pixel: -> (coordinates [N, H, W, 2] (u, v), valid [N, H, W] 0/1).

    canonical_depth [N, H, W] metres; rotation_angles [N, 3] radians; translation [N, 3] metres; K [3, 3] (default:
    10 degree field of view); the object rotates about (0, 0, rotation_center_depth). A pixel is valid when its source
    lies inside the canonical image and maps back onto it within tolerance_px pixels.
    """
    canonical_depth = _check_depth(canonical_depth)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    batch, height, width = ops.shape(canonical_depth)[0], canonical_depth.shape[1], canonical_depth.shape[2]
    K = _default_intrinsics(K, height, width, canonical_depth.dtype)
    target = ops.broadcast_to(pixel_grid(height, width, canonical_depth.dtype)[None], (batch, height, width, 2))
    target_rays = rays(target, K)

    source = target
    for _ in range(iterations):
        surface = rays(source, K) * bilinear_sample(canonical_depth[..., None], source)
        view_depth = to_view(surface, rotation_angles, translation, rotation_center_depth)[..., 2:3]
        source = project(to_canonical(target_rays * view_depth, rotation_angles, translation, rotation_center_depth), K)

    reprojected = canonical_to_view_pixels(canonical_depth, rotation_angles, translation, K, rotation_center_depth,
                                           pixels=source)
    residual = ops.sqrt(ops.sum(ops.square(reprojected - target), axis=-1))
    inside = ops.logical_and(
        ops.logical_and(source[..., 0] >= -1e-3, source[..., 0] <= width - 1 + 1e-3),
        ops.logical_and(source[..., 1] >= -1e-3, source[..., 1] <= height - 1 + 1e-3),
    )
    valid = ops.logical_and(inside, residual < tolerance_px)
    return source, ops.stop_gradient(ops.cast(valid, canonical_depth.dtype))


def warp_to_view(canonical_image, canonical_depth, rotation_angles, translation, K=None, rotation_center_depth=1.0,
                 iterations=6, tolerance_px=0.1):
    """The image seen from the viewpoint: -> (view_image [N, H, W, C], valid [N, H, W] 0/1).

    canonical_image [N, H, W, C] (e.g. the shaded canonical face I_c); other arguments as `source_coordinates`.
    Invalid pixels hold the bilinear sample at the unresolved source; mask them (or composite a background) with valid.
    """
    canonical_image = ops.convert_to_tensor(canonical_image)
    canonical_depth = _check_depth(canonical_depth)
    if tuple(canonical_image.shape[1:3]) != tuple(canonical_depth.shape[1:3]):
        raise ValueError(f"canonical_image {tuple(canonical_image.shape)} and canonical_depth "
                         f"{tuple(canonical_depth.shape)} must have the same height and width")
    coordinates, valid = source_coordinates(canonical_depth, rotation_angles, translation, K, rotation_center_depth,
                                            iterations, tolerance_px)
    return bilinear_sample(canonical_image, coordinates), valid
