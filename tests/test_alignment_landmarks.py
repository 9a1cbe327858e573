"""tfface.data.landmarks: the 68 -> 5 mapping, NME, and head pose sign conventions on synthetic projections."""
import numpy as np
import pytest

from tfface.data.alignment import ARCFACE_TEMPLATE_112X112
from tfface.data.landmarks import (GENERIC_FACE_5_POINTS_MM, angles_from_rotation, estimate_pose,
                                   eye_centre_distance, five_from_68, interocular_distance, normalised_mean_error,
                                   rotation_matrix)

MODEL = GENERIC_FACE_5_POINTS_MM  # x right, y down, z towards the camera; millimetres


def turn_about_vertical(points, degrees):
    """Yaw by hand: x' = x cos + z sin, z' = -x sin + z cos (a nose in front of the face moves right)."""
    a = np.radians(degrees)
    x, y, z = points.T
    return np.stack([x * np.cos(a) + z * np.sin(a), y, -x * np.sin(a) + z * np.cos(a)], axis=1)


def tilt_about_horizontal(points, degrees):
    """Pitch by hand: y' = y cos - z sin, z' = y sin + z cos (a nose in front of the face moves up)."""
    a = np.radians(degrees)
    x, y, z = points.T
    return np.stack([x, y * np.cos(a) - z * np.sin(a), y * np.sin(a) + z * np.cos(a)], axis=1)


def spin_in_image(points, degrees):
    """Roll by hand: (x, y) turned clockwise on screen (y points down)."""
    a = np.radians(degrees)
    x, y, z = points.T
    return np.stack([x * np.cos(a) - y * np.sin(a), x * np.sin(a) + y * np.cos(a), z], axis=1)


def photograph(yaw=0.0, pitch=0.0, roll=0.0, scale=1.8, shift=(120.0, 90.0)):
    """Weak-perspective image points [5, 2] of the generic face turned by pitch, then yaw, then roll."""
    points = spin_in_image(turn_about_vertical(tilt_about_horizontal(MODEL, pitch), yaw), roll)
    return scale * points[:, :2] + np.array(shift)


def test_five_from_68_takes_eye_means_nose_tip_and_mouth_corners():
    points = np.stack([np.arange(68.0), 2 * np.arange(68.0)], axis=1)  # point i at (i, 2 i)
    five = five_from_68(points)
    # eyes: mean of 36..41 = 38.5, of 42..47 = 44.5; nose tip 30; mouth corners 48 and 54
    np.testing.assert_allclose(five, [[38.5, 77], [44.5, 89], [30, 60], [48, 96], [54, 108]])
    batch = np.stack([points, points + 1.0])
    np.testing.assert_allclose(five_from_68(batch)[1], five + 1.0)
    with pytest.raises(ValueError, match=r"landmarks must be \[\.\.\., 68, 2\]"):
        five_from_68(points[:5])


def test_normalisers_and_nme_by_hand():
    points = np.zeros((68, 2))
    points[36], points[45] = [10, 20], [40, 60]  # outer eye corners 50 apart
    assert interocular_distance(points) == pytest.approx(50.0)
    assert eye_centre_distance([[0, 0], [6, 8], [0, 0], [0, 0], [0, 0]]) == pytest.approx(10.0)

    target = np.zeros((2, 5, 2))
    predicted = target.copy()
    predicted[0] += [3.0, 4.0]  # every point 5 pixels off
    predicted[1, 0] += [0.0, 10.0]  # one point of five 10 pixels off: mean 2
    np.testing.assert_allclose(normalised_mean_error(predicted, target, [50.0, 20.0]), [0.1, 0.1])
    with pytest.raises(ValueError, match="normaliser must be"):
        normalised_mean_error(predicted, target, [50.0, 0.0])


def test_rotation_matrix_is_roll_after_yaw_after_pitch():
    rotation = rotation_matrix(30.0, -20.0, 10.0)
    by_hand = spin_in_image(turn_about_vertical(tilt_about_horizontal(np.eye(3), -20.0), 30.0), 10.0).T
    np.testing.assert_allclose(rotation, by_hand, atol=1e-12)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(angles_from_rotation(rotation), (30.0, -20.0, 10.0), atol=1e-9)


@pytest.mark.parametrize(
    "yaw, pitch, roll",
    [(0, 0, 0), (35, 0, 0), (-50, 0, 0), (0, 25, 0), (0, -30, 0), (0, 0, 20), (0, 0, -35), (40, -20, 15),
     (-65, 30, -25), (80, 10, 5)],
)
def test_pose_is_recovered_from_exact_projections(yaw, pitch, roll):
    fit = estimate_pose(photograph(yaw, pitch, roll, scale=2.5, shift=(64.0, 40.0)))
    np.testing.assert_allclose([fit.yaw, fit.pitch, fit.roll], [yaw, pitch, roll], atol=1e-5)
    assert fit.scale == pytest.approx(2.5) and fit.rms_error < 1e-6
    np.testing.assert_allclose(fit.translation, [64.0, 40.0], atol=1e-6)


def test_pose_signs_follow_what_the_image_shows():
    frontal = photograph()
    eyes_mid_x = frontal[:2, 0].mean()

    turned = photograph(yaw=25)
    assert turned[2, 0] > turned[:2, 0].mean() and frontal[2, 0] == pytest.approx(eyes_mid_x)  # nose moved right
    assert estimate_pose(turned).yaw == pytest.approx(25, abs=1e-4)

    raised = photograph(pitch=20)
    nose_height = (raised[:2, 1].mean() - raised[2, 1]) - (frontal[:2, 1].mean() - frontal[2, 1])
    assert nose_height > 0  # the nose tip moved up, relative to the eyes
    assert estimate_pose(raised).pitch == pytest.approx(20, abs=1e-4)

    spun = photograph(roll=15)
    assert spun[1, 1] > spun[0, 1]  # the right eye is lower: clockwise on screen
    assert estimate_pose(spun).roll == pytest.approx(15, abs=1e-4)


def test_mirroring_negates_yaw_and_roll_keeps_pitch():
    points = photograph(30, 12, -18)
    mirrored = np.stack([200.0 - points[:, 0], points[:, 1]], axis=1)[[1, 0, 2, 4, 3]]
    original, flipped = estimate_pose(points), estimate_pose(mirrored)
    np.testing.assert_allclose([flipped.yaw, flipped.pitch, flipped.roll],
                               [-original.yaw, original.pitch, -original.roll], atol=1e-5)


def test_the_arcface_template_is_frontal_and_noise_moves_the_pose_little():
    template_pose = estimate_pose(ARCFACE_TEMPLATE_112X112)
    assert max(abs(template_pose.yaw), abs(template_pose.pitch), abs(template_pose.roll)) < 1.0

    rng = np.random.default_rng(0)
    points = photograph(30, -15, 10, scale=2.0) + rng.normal(0, 0.5, size=(5, 2))  # a 130-pixel-wide face
    fit = estimate_pose(points)
    np.testing.assert_allclose([fit.yaw, fit.pitch, fit.roll], [30, -15, 10], atol=4.0)


def test_pose_rejects_bad_landmarks():
    with pytest.raises(ValueError, match=r"landmarks must be \[\.\.\., 5, 2\]"):
        estimate_pose(np.zeros((68, 2)))
    with pytest.raises(ValueError, match="landmarks all coincide"):
        estimate_pose(np.ones((5, 2)))
