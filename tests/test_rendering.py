"""tfface.rendering against hand computations: rotations, camera, normals, shading, the view warp and its gradients."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfface import rendering as r

FOCAL_64 = 63.0 / (2.0 * math.tan(math.radians(5.0)))  # 3D-BERL Eq. 3 at 64 px, 10 degree field of view


def _rx(a):
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _ry(a):
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rz(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _numpy_rays(height, width, focal):
    """[H, W, 3] rays (x/z, y/z, 1) through the pixel centres of a centred pinhole camera."""
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack([(columns - (width - 1) / 2) / focal, (rows - (height - 1) / 2) / focal, np.ones((height, width))], -1)


def _sphere_depth(height, width, focal, center_depth, radius):
    """Depth map of a sphere centred on the optical axis, its points [H, W, 3] and a mask of rays that hit it well."""
    ray = _numpy_rays(height, width, focal)
    rho2 = np.sum(ray**2, -1)
    disc = center_depth**2 - rho2 * (center_depth**2 - radius**2)
    depth = (center_depth - np.sqrt(np.maximum(disc, 0.0))) / rho2
    well_inside = disc > 0.5 * radius**2
    return depth, ray * depth[..., None], well_inside


# ---------------------------------------------------------------- rotation


def test_single_axis_rotations_equal_hand_written_matrices():
    a = 0.3
    for axis, expected in enumerate([_rx(a), _ry(a), _rz(a)]):
        angles = np.zeros((1, 3))
        angles[0, axis] = a
        np.testing.assert_allclose(r.euler_to_matrix(angles)[0], expected, atol=1e-6)
    np.testing.assert_allclose(r.euler_to_matrix([[0.0, 0.5, 0.0]])[0], [[np.cos(0.5), 0, np.sin(0.5)], [0, 1, 0],
                                                                        [-np.sin(0.5), 0, np.cos(0.5)]], atol=1e-6)


def test_rotation_order_is_roll_yaw_pitch_and_orthonormal():
    rng = np.random.default_rng(0)
    angles = rng.uniform(-np.pi, np.pi, (5, 3))
    matrices = np.asarray(r.euler_to_matrix(angles.astype(np.float64)))
    for (pitch, yaw, roll), matrix in zip(angles, matrices):
        np.testing.assert_allclose(matrix, _rz(roll) @ _ry(yaw) @ _rx(pitch), atol=1e-12)
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(matrix) == pytest.approx(1.0)


def test_rotation_gradient_equals_derivative_of_the_yaw_matrix():
    angles = tf.constant([[0.2, 0.4, -0.3]], tf.float64)
    weights = np.arange(9.0).reshape(3, 3)
    with tf.GradientTape() as tape:
        tape.watch(angles)
        loss = tf.reduce_sum(r.euler_to_matrix(angles)[0] * weights)
    pitch, yaw, roll = 0.2, 0.4, -0.3
    d_ry = np.array([[-np.sin(yaw), 0, np.cos(yaw)], [0, 0, 0], [-np.cos(yaw), 0, -np.sin(yaw)]])
    expected = np.sum(_rz(roll) @ d_ry @ _rx(pitch) * weights)
    assert tape.gradient(loss, angles)[0, 1].numpy() == pytest.approx(expected, rel=1e-10)


def test_rotation_rejects_bad_shape():
    with pytest.raises(ValueError, match="angles"):
        r.euler_to_matrix(np.zeros((4, 2)))


def test_viewpoint_rotates_about_the_centre_then_translates_and_inverts():
    rng = np.random.default_rng(5)
    points = rng.uniform(-0.1, 0.1, (2, 7, 3)) + [0.0, 0.0, 1.0]
    angles, translation = rng.uniform(-0.5, 0.5, (2, 3)), rng.uniform(-0.02, 0.02, (2, 3))
    view = np.asarray(r.to_view(points, angles, translation, rotation_center_depth=0.95))
    center = np.array([0.0, 0.0, 0.95])
    for n, (pitch, yaw, roll) in enumerate(angles):
        expected = (points[n] - center) @ (_rz(roll) @ _ry(yaw) @ _rx(pitch)).T + center + translation[n]
        np.testing.assert_allclose(view[n], expected, atol=1e-12)
    np.testing.assert_allclose(r.to_canonical(view, angles, translation, rotation_center_depth=0.95), points,
                               atol=1e-12)


# ---------------------------------------------------------------- camera


def test_intrinsics_follow_eq3():
    K = np.asarray(r.intrinsics_from_fov(10.0, 48, 64))
    np.testing.assert_allclose(K, [[FOCAL_64, 0, 31.5], [0, FOCAL_64, 23.5], [0, 0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="fov_degrees"):
        r.intrinsics_from_fov(0.0, 8, 8)


def test_unproject_hand_value_and_project_inverts_it():
    K = r.intrinsics_from_fov(10.0, 64, 64)
    depth = np.random.default_rng(1).uniform(0.8, 1.2, (2, 64, 64)).astype(np.float32)
    points = np.asarray(r.unproject(depth, K))
    row, column = 10, 50
    expected = depth[1, row, column] * np.array([(column - 31.5) / FOCAL_64, (row - 31.5) / FOCAL_64, 1.0])
    np.testing.assert_allclose(points[1, row, column], expected, rtol=1e-5)
    pixels = np.asarray(r.project(points, K))
    columns, rows = np.meshgrid(np.arange(64), np.arange(64))
    np.testing.assert_allclose(pixels, np.broadcast_to(np.stack([columns, rows], -1), (2, 64, 64, 2)), atol=1e-3)


def test_project_hand_value():
    K = r.intrinsics_from_fov(10.0, 64, 64)
    pixels = np.asarray(r.project(np.array([[[0.02, -0.01, 0.8]]], np.float32), K))
    np.testing.assert_allclose(pixels[0, 0], [31.5 + FOCAL_64 * 0.025, 31.5 - FOCAL_64 * 0.0125], rtol=1e-6)


# ---------------------------------------------------------------- normals


def test_normals_of_a_tilted_plane():
    """Plane z = z0 + a x + b y: n = (-a, -b, 1) / |.| everywhere (borders copy their neighbours)."""
    z0, a, b = 1.0, 0.4, -0.25
    ray = _numpy_rays(16, 20, 100.0)
    depth = z0 / (1.0 - a * ray[..., 0] - b * ray[..., 1])
    K = np.array([[100.0, 0, 9.5], [0, 100.0, 7.5], [0, 0, 1]], np.float32)
    normals = np.asarray(r.normals_from_depth(depth[None].astype(np.float32), K))[0]
    expected = np.array([-a, -b, 1.0]) / np.linalg.norm([-a, -b, 1.0])
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=2e-4)


def test_normals_of_a_sphere_point_inward():
    center_depth, radius = 1.0, 0.07
    depth, points, well_inside = _sphere_depth(64, 64, FOCAL_64, center_depth, radius)
    normals = np.asarray(r.normals_from_depth(depth[None].astype(np.float32), r.intrinsics_from_fov(10.0, 64, 64)))[0]
    expected = (np.array([0.0, 0.0, center_depth]) - points) / radius
    angle_error = np.degrees(np.arccos(np.clip(np.sum(normals * expected, -1), -1, 1)))
    assert angle_error[well_inside].max() < 1.0


# ---------------------------------------------------------------- shading


def test_light_direction_and_lambertian_by_hand():
    light = np.asarray(r.light_direction([0.5, 0.0], [-1.0, 0.0]))
    np.testing.assert_allclose(light[0], np.array([0.5, -1.0, 1.0]) / 1.5, rtol=1e-6)
    np.testing.assert_allclose(light[1], [0.0, 0.0, 1.0])
    normals = np.array([[[[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]], [[-0.6, 0.0, 0.8], [0.0, -0.8, 0.6]]]], np.float32)
    albedo = np.array([[[[0.5, 0.2, 1.0], [1.0, 1.0, 1.0]], [[0.3, 0.3, 0.3], [0.9, 0.1, 0.4]]]], np.float32)
    l = np.array([0.5, -1.0, 1.0]) / 1.5
    # <l, n> per pixel: 1/1.5, (0.3+0.8)/1.5, (-0.3+0.8)/1.5, (0.8+0.6)/1.5
    shading = np.array([[1.0, 1.1], [0.5, 1.4]]) / 1.5
    image = np.asarray(r.lambertian(albedo, normals, [0.2], [0.7], l[None]))
    np.testing.assert_allclose(image[0], albedo[0] * (0.2 + 0.7 * shading[..., None]), rtol=1e-5)
    back_lit = np.asarray(r.shading_map(normals, -l[None]))
    np.testing.assert_allclose(back_lit, 0.0)


def test_lambertian_gradients_are_closed_form():
    albedo = tf.constant(np.full((1, 1, 1, 3), 0.5), tf.float64)
    normals = tf.constant([[[[0.6, 0.0, 0.8]]]], tf.float64)
    ambient, diffuse = tf.constant([0.3], tf.float64), tf.constant([0.6], tf.float64)
    l_dx, l_dy = tf.constant([0.2], tf.float64), tf.constant([0.1], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([ambient, diffuse, l_dx])
        image = r.lambertian(albedo, normals, ambient, diffuse, r.light_direction(l_dx, l_dy))
        loss = tf.reduce_sum(image)
    g_ambient, g_diffuse, g_ldx = tape.gradient(loss, [ambient, diffuse, l_dx])
    norm = math.sqrt(0.2**2 + 0.1**2 + 1)
    shading = (0.6 * 0.2 + 0.8) / norm
    d_shading_d_ldx = 0.6 / norm - (0.6 * 0.2 + 0.8) * 0.2 / norm**3
    assert g_ambient.numpy()[0] == pytest.approx(1.5)
    assert g_diffuse.numpy()[0] == pytest.approx(1.5 * shading)
    assert g_ldx.numpy()[0] == pytest.approx(1.5 * 0.6 * d_shading_d_ldx)


# ---------------------------------------------------------------- sampling and warp


def test_bilinear_sample_by_hand_with_border_clamping():
    images = np.arange(2 * 3 * 4 * 2, dtype=np.float64).reshape(2, 3, 4, 2)
    coordinates = np.array([[[[1.25, 0.5], [-3.0, 1.0]]], [[[3.0, 2.0], [2.5, 7.0]]]])  # (u, v)
    sampled = np.asarray(r.bilinear_sample(images, coordinates))

    def by_hand(image, u, v):
        u, v = np.clip(u, 0, 3), np.clip(v, 0, 2)
        u0, v0 = int(np.floor(u)), int(np.floor(v))
        u1, v1 = min(u0 + 1, 3), min(v0 + 1, 2)
        fu, fv = u - u0, v - v0
        return ((1 - fu) * (1 - fv) * image[v0, u0] + fu * (1 - fv) * image[v0, u1]
                + (1 - fu) * fv * image[v1, u0] + fu * fv * image[v1, u1])

    for n in range(2):
        for k in range(2):
            np.testing.assert_allclose(sampled[n, 0, k], by_hand(images[n], *coordinates[n, 0, k]), rtol=1e-12)


def test_identity_viewpoint_returns_the_input():
    rng = np.random.default_rng(2)
    image = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    depth = rng.uniform(0.9, 1.1, (2, 32, 32)).astype(np.float32)
    view, valid = r.warp_to_view(image, depth, np.zeros((2, 3)), np.zeros((2, 3)))
    np.testing.assert_allclose(view, image, atol=1e-4)
    np.testing.assert_array_equal(valid, 1.0)


def _dot_image(size, center, sigma=1.2):
    columns, rows = np.meshgrid(np.arange(size), np.arange(size))
    return np.exp(-((columns - center[0]) ** 2 + (rows - center[1]) ** 2) / (2 * sigma**2))


def _centroid(image):
    columns, rows = np.meshgrid(np.arange(image.shape[1]), np.arange(image.shape[0]))
    return np.array([np.sum(columns * image), np.sum(rows * image)]) / np.sum(image)


def test_small_yaw_moves_a_dot_left_by_the_hand_computed_amount():
    """A dot on a plane 0.1 m in front of the rotation centre; yaw 3 degrees about (0, 0, 1).

    The point (0, 0, 0.9) relative to the centre is (0, 0, -0.1); Ry(yaw) sends it to (-0.1 sin, 0, -0.1 cos), seen
    at u = 31.5 + f (-0.1 sin yaw) / (1 - 0.1 cos yaw): about 2.1 px to the left.
    """
    yaw = math.radians(3.0)
    image = _dot_image(64, (31.5, 31.5))[None, ..., None].astype(np.float32)
    depth = np.full((1, 64, 64), 0.9, np.float32)
    view, valid = r.warp_to_view(image, depth, [[0.0, yaw, 0.0]], [[0.0, 0.0, 0.0]])
    expected_u = 31.5 + FOCAL_64 * (-0.1 * math.sin(yaw)) / (1.0 - 0.1 * math.cos(yaw))
    np.testing.assert_allclose(_centroid(np.asarray(view)[0, ..., 0]), [expected_u, 31.5], atol=0.05)
    assert expected_u < 31.5 - 2.0
    assert np.asarray(valid)[0, 16:48, 16:48].min() == 1.0


def test_translation_and_pitch_move_a_dot_as_computed():
    """t = (0.01, 0, 0) shifts by f * 0.01 / 0.9 px; pitch 3 degrees moves the dot down by f 0.1 sin / (1 - 0.1 cos)."""
    image = _dot_image(64, (31.5, 31.5))[None, ..., None].astype(np.float32)
    depth = np.full((1, 64, 64), 0.9, np.float32)
    shifted, _ = r.warp_to_view(image, depth, [[0.0, 0.0, 0.0]], [[0.01, 0.0, 0.0]])
    np.testing.assert_allclose(_centroid(np.asarray(shifted)[0, ..., 0]), [31.5 + FOCAL_64 * 0.01 / 0.9, 31.5],
                               atol=0.05)
    pitch = math.radians(3.0)
    tilted, _ = r.warp_to_view(image, depth, [[pitch, 0.0, 0.0]], [[0.0, 0.0, 0.0]])
    expected_v = 31.5 + FOCAL_64 * 0.1 * math.sin(pitch) / (1.0 - 0.1 * math.cos(pitch))
    np.testing.assert_allclose(_centroid(np.asarray(tilted)[0, ..., 0]), [31.5, expected_v], atol=0.05)


def test_warp_of_a_rotated_sphere_matches_ray_tracing():
    """A sphere centred at the rotation centre keeps its view depth; sources follow from R^T (X - c) + c exactly."""
    center_depth, radius, size = 1.0, 0.07, 32
    focal = 31.0 / (2.0 * math.tan(math.radians(5.0)))
    depth, points, well_inside = _sphere_depth(size, size, focal, center_depth, radius)
    angles = np.array([[0.0, 0.3, 0.0], [0.2, -0.2, 0.1]])
    source, valid = r.source_coordinates(np.stack([depth, depth]).astype(np.float32), angles.astype(np.float32),
                                         np.zeros((2, 3), np.float32), tolerance_px=0.1)
    center = np.array([0.0, 0.0, center_depth])
    for index, (pitch, yaw, roll) in enumerate(angles):
        canonical = (points - center) @ (_rz(roll) @ _ry(yaw) @ _rx(pitch)) + center  # R^T applied to row vectors
        expected = focal * canonical[..., :2] / canonical[..., 2:] + (size - 1) / 2
        error = np.abs(np.asarray(source)[index] - expected).max(-1)
        assert error[well_inside].max() < 0.03
        assert np.asarray(valid)[index][well_inside].min() == 1.0


def test_nearer_surface_occludes_the_one_behind_it():
    """A raised block (left half, 0.9 m) beside a low floor (right half, 1 m, through the rotation centre).

    Yaw -10 degrees swings the block's edge (canonical pixel 31 at 0.9 m) to the right, over the floor: by hand it is
    seen at u = 31.5 + f x' / (1 + z') with (x', z') = Ry (x, -0.1), x = -0.5 * 0.9 / f. The view must show the block
    (white) up to there, although the floor's own points map to those pixels too, and the floor (black) after it.
    """
    yaw = math.radians(-10.0)
    depth = np.where(np.arange(64) <= 31, 0.9, 1.0)[None, None, :].repeat(64, axis=1).astype(np.float32)
    image = (np.arange(64) <= 31).astype(np.float32)[None, None, :, None].repeat(64, axis=1)
    view, valid = r.warp_to_view(image, depth, [[0.0, yaw, 0.0]], [[0.0, 0.0, 0.0]])
    x = -0.5 * 0.9 / FOCAL_64
    edge_x = x * math.cos(yaw) + math.sin(yaw) * -0.1
    edge_z = -x * math.sin(yaw) + math.cos(yaw) * -0.1
    edge_u = 31.5 + FOCAL_64 * edge_x / (1.0 + edge_z)
    assert 37.0 < edge_u < 39.0
    row = np.asarray(view)[0, 20, :, 0]
    assert row[: int(edge_u) - 1].min() > 0.99
    assert row[int(edge_u) + 2:].max() < 0.01
    valid_row = np.asarray(valid)[0, 20]
    assert valid_row[10: int(edge_u) - 1].min() == 1.0 and valid_row[int(edge_u) + 2: 60].min() == 1.0
    assert valid_row[:4].max() == 0.0  # the block moved right: these rays start left of the canonical image


def test_forward_map_sends_canonical_pixels_where_the_warp_shows_them():
    rng = np.random.default_rng(3)
    depth = (0.95 + 0.02 * rng.uniform(size=(2, 4, 4))).astype(np.float32)
    depth = tf.image.resize(depth[..., None], (32, 32), method="bicubic")[..., 0]
    angles, translation = [[0.05, -0.1, 0.03], [-0.1, 0.2, 0.0]], [[0.002, -0.001, 0.01], [0.0, 0.003, -0.02]]
    source, valid = r.source_coordinates(depth, angles, translation)
    forward = np.asarray(r.canonical_to_view_pixels(depth, angles, translation, pixels=source))
    columns, rows = np.meshgrid(np.arange(32), np.arange(32))
    target = np.stack([columns, rows], -1)
    for index in range(2):
        mask = np.asarray(valid)[index] > 0
        assert mask.mean() > 0.8
        np.testing.assert_allclose(forward[index][mask], target[mask], atol=0.1)


def _render(albedo, depth, angles, translation, ambient, diffuse, l_dx, l_dy):
    K = r.intrinsics_from_fov(10.0, depth.shape[1], depth.shape[2], dtype=depth.dtype)
    canonical = r.lambertian(albedo, r.normals_from_depth(depth, K), ambient, diffuse, r.light_direction(l_dx, l_dy))
    view, _ = r.warp_to_view(canonical, depth, angles, translation, K)
    return view


def test_render_gradients_are_finite_nonzero_and_match_finite_differences():
    rng = np.random.default_rng(4)
    size = 12
    columns, rows = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size))
    depth = tf.constant((1.0 - 0.04 * np.exp(-(columns**2 + rows**2)))[None], tf.float64)
    albedo = tf.constant(rng.uniform(0.2, 0.9, (1, size, size, 3)), tf.float64)
    angles = tf.constant([[0.04, 0.08, -0.03]], tf.float64)
    translation = tf.constant([[0.001, -0.002, 0.01]], tf.float64)
    light = tf.constant([0.5, 0.6, 0.3, -0.2], tf.float64)  # k_a, k_d, l_dx, l_dy
    weights = tf.constant(rng.normal(size=(1, size, size, 3)), tf.float64)

    @tf.function(autograph=False)
    def loss_fn(depth, albedo, angles, translation, light):
        view = _render(albedo, depth, angles, translation, light[0:1], light[1:2], light[2:3], light[3:4])
        return tf.reduce_sum(view[:, 2:-2, 2:-2] * weights[:, 2:-2, 2:-2])

    variables = [depth, albedo, angles, translation, light]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        loss = loss_fn(*variables)
    gradients = tape.gradient(loss, variables)
    for name, gradient in zip(["depth", "albedo", "angles", "translation", "light"], gradients):
        assert gradient is not None, name
        assert np.all(np.isfinite(gradient.numpy())), name
        assert np.abs(gradient.numpy()).max() > 1e-6, name

    step = 1e-6
    checked = {0: [5 * size + 5, 6 * size + 4, 7 * size + 7], 2: range(3), 3: range(3), 4: range(4)}
    for index, components in checked.items():  # depth (3 pixels), angles, translation, light by central differences
        flat = variables[index].numpy().ravel()
        numeric = []
        for k in components:
            plus, minus = flat.copy(), flat.copy()
            plus[k] += step
            minus[k] -= step
            args_plus, args_minus = list(variables), list(variables)
            args_plus[index] = tf.constant(plus.reshape(variables[index].shape), tf.float64)
            args_minus[index] = tf.constant(minus.reshape(variables[index].shape), tf.float64)
            numeric.append((loss_fn(*args_plus) - loss_fn(*args_minus)).numpy() / (2 * step))
        np.testing.assert_allclose(gradients[index].numpy().ravel()[list(components)], numeric, rtol=1e-4, atol=1e-6)


def test_warp_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="canonical_depth"):
        r.warp_to_view(np.zeros((1, 8, 8, 3)), np.ones((1, 6, 8)), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="canonical_depth"):
        r.warp_to_view(np.zeros((1, 8, 8, 3)), np.ones((8, 8)), np.zeros((1, 3)), np.zeros((1, 3)))
