"""tfface.data.alignment: Umeyama against hand-computed and least-squares transforms, the templates, warping."""
import numpy as np
import pytest

from tfface.data.alignment import (ARCFACE_TEMPLATE_112X112, ARCFACE_TEMPLATE_112X96, align_face, arcface_template,
                                   centre_crop_matrix, transform_points, umeyama, warp_similarity)

# insightface's arcface_dst, pixel-index coordinates of a 112 x 112 crop
INSIGHTFACE_ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def similarity(scale, degrees, tx, ty):
    angle = np.radians(degrees)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def least_squares_similarity(source, target):
    """Independent reference: solve x' = a x - b y + tx, y' = b x + a y + ty by linear least squares."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        values += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(values, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]])


def test_umeyama_exact_hand_computed_case():
    # a quarter turn, scale 1.5, shift (10, 5): (2, 0) -> (10, 8) and (0, 2) -> (7, 5)
    source = [[0, 0], [2, 0], [0, 2]]
    target = [[10, 5], [10, 8], [7, 5]]
    np.testing.assert_allclose(umeyama(source, target), [[0, -1.5, 10], [1.5, 0, 5], [0, 0, 1]], atol=1e-12)


def test_umeyama_least_squares_hand_computed_case():
    # centred source; one target point off the similarity. By hand: t = mean(target) = (0, 0.25),
    # a = sum(<p, q - t>) / sum |p|^2 = (2 + 1.75 + 2 + 1.25) / 4 = 1.75, b = sum(p x (q - t)) / 4 = 0
    source = [[1, 0], [0, 1], [-1, 0], [0, -1]]
    target = [[2, 0], [0, 2], [-2, 0], [0, -1]]
    np.testing.assert_allclose(umeyama(source, target), [[1.75, 0, 0], [0, 1.75, 0.25], [0, 0, 1]], atol=1e-12)


@pytest.mark.parametrize("mirror", [False, True])
def test_umeyama_matches_linear_least_squares_and_never_reflects(mirror):
    rng = np.random.default_rng(3)
    source = rng.uniform(0, 100, size=(5, 2))
    target = transform_points(similarity(0.7, 33.0, 12.0, -4.0), source) + rng.normal(0, 2.0, size=(5, 2))
    if mirror:  # the best map would be a reflection; the answer must stay a proper similarity
        target[:, 0] *= -1
    matrix = umeyama(source, target)
    np.testing.assert_allclose(matrix, least_squares_similarity(source, target), atol=1e-9)
    assert np.linalg.det(matrix[:2, :2]) > 0


def test_umeyama_without_scale_is_a_rigid_motion():
    source = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    target = transform_points(similarity(2.0, 90.0, 1.0, 1.0), source)
    matrix = umeyama(source, target, estimate_scale=False)
    np.testing.assert_allclose(matrix[:2, :2] @ matrix[:2, :2].T, np.eye(2), atol=1e-12)


@pytest.mark.parametrize(
    "source, target, message",
    [
        ([[0, 0], [1, 1]], [[0, 0]], "must both be [N, D]"),
        ([[1, 1]], [[2, 2]], "at least 2 point pairs"),
        ([[1, 1], [1, 1], [1, 1]], [[0, 0], [1, 0], [0, 1]], "source points all coincide"),
        ([[0, 0], [1, np.nan]], [[0, 0], [1, 1]], "finite"),
    ],
)
def test_umeyama_rejects_bad_points(source, target, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        umeyama(source, target)


def test_templates_are_insightface_points_in_continuous_pixels():
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112X112, INSIGHTFACE_ARCFACE_DST + 0.5)
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112X96, INSIGHTFACE_ARCFACE_DST + [-7.5, 0.5])
    np.testing.assert_allclose(arcface_template((112, 96)), ARCFACE_TEMPLATE_112X96)
    np.testing.assert_allclose(arcface_template((224, 224)), 2 * ARCFACE_TEMPLATE_112X112)
    with pytest.raises(ValueError, match="output_size must have the aspect"):
        arcface_template((112, 100))
    with pytest.raises(ValueError, match="output_size must be"):
        arcface_template((112, 0))


def test_warp_by_an_integer_shift_moves_pixels_and_fills_black():
    image = np.arange(1, 13, dtype=np.uint8).reshape(3, 4)
    shifted = warp_similarity(image, similarity(1.0, 0.0, 2.0, 1.0), (3, 4))
    expected = np.zeros((3, 4), np.uint8)
    expected[1:, 2:] = image[:2, :2]
    np.testing.assert_array_equal(shifted, expected)


def test_warp_of_a_linear_ramp_samples_it_at_the_mapped_pixel_centres():
    rows, cols = np.mgrid[0:20, 0:24]
    ramp = (10 + 4 * cols + 6 * rows).astype(np.uint8)  # bilinear sampling reproduces a linear ramp exactly
    matrix = similarity(1.3, 25.0, 4.0, -6.0)
    warped = warp_similarity(ramp, matrix, (16, 16)).astype(float)

    out_rows, out_cols = np.mgrid[0:16, 0:16]
    centres = np.stack([out_cols + 0.5, out_rows + 0.5], axis=-1).reshape(-1, 2)
    inverse = np.linalg.inv(matrix)
    source = centres @ inverse[:2, :2].T + inverse[:2, 2] - 0.5  # pixel-index coordinates in the ramp
    inside = (source[:, 0] >= 0) & (source[:, 0] <= 23) & (source[:, 1] >= 0) & (source[:, 1] <= 19)
    expected = 10 + 4 * source[:, 0] + 6 * source[:, 1]
    assert inside.sum() > 100
    np.testing.assert_allclose(warped.reshape(-1)[inside], expected[inside], atol=0.5 + 1e-6)


def test_shrinking_averages_instead_of_aliasing():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    small = warp_similarity(checker, similarity(0.25, 0.0, 0.0, 0.0), (16, 16))
    np.testing.assert_allclose(small[1:-1, 1:-1], 128, atol=1)  # box mean 127.5, rounded


def test_warp_keeps_channels_and_rejects_bad_input():
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 1] = 200
    assert warp_similarity(image, np.eye(3), (8, 8))[4, 4].tolist() == [0, 200, 0]
    with pytest.raises(ValueError, match="image must be uint8"):
        warp_similarity(image.astype(np.float32), np.eye(3), (8, 8))
    with pytest.raises(ValueError, match="invertible"):
        warp_similarity(image, np.zeros((3, 3)), (8, 8))


def test_centre_crop_maps_the_largest_centred_region():
    # a 200 x 100 (h x w) image into 112 x 112: scale 1.12, the central 100 x 100 square is kept
    matrix = centre_crop_matrix((200, 100), (112, 112))
    np.testing.assert_allclose(matrix, [[1.12, 0, 0], [0, 1.12, -56], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(transform_points(matrix, [[50, 100], [0, 50], [100, 150]]),
                               [[56, 56], [0, 0], [112, 112]], atol=1e-12)


def gaussian_dots(shape, points, sigma=2.0) -> np.ndarray:
    """uint8 image with a Gaussian dot at each continuous (x, y) point, evaluated at pixel centres."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.zeros(shape)
    for x, y in points:
        image += 250 * np.exp(-((cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2) / (2 * sigma**2))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("output_size", [(112, 112), (112, 96)])
def test_aligned_dots_land_on_the_template(output_size):
    """End to end with the pixel conventions: dots drawn at the landmarks end up centred on the template."""
    template = arcface_template(output_size)
    landmarks = transform_points(similarity(1.6, -20.0, 30.0, 45.0), template)
    image = gaussian_dots((260, 240), landmarks, sigma=3.0)
    aligned, matrix = align_face(image, landmarks, output_size)
    np.testing.assert_allclose(transform_points(matrix, landmarks), template, atol=1e-9)

    rows, cols = np.mgrid[0 : output_size[0], 0 : output_size[1]]
    for x, y in template:
        window = (np.abs(cols + 0.5 - x) < 5) & (np.abs(rows + 0.5 - y) < 5)
        weights = aligned * window
        centroid = [np.sum(weights * (cols + 0.5)) / weights.sum(), np.sum(weights * (rows + 0.5)) / weights.sum()]
        np.testing.assert_allclose(centroid, [x, y], atol=0.15)
