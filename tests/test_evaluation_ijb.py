"""IJB meta reading and template pooling against hand-computed templates, on tiny meta files."""
import numpy as np
import pytest

from tfface.evaluation import evaluate_ijb, read_ijb_meta, template_features, template_pair_scores

# image, template, media, features, detector score. Template 2 reuses media id 10 of template 1: media are
# grouped per template, so img3 must not be averaged with img0 and img1.
IMAGES = [
    ("img0.jpg", 1, 10, [2.0, 0.0, 0.0], 1.0),
    ("img1.jpg", 1, 10, [0.0, 2.0, 0.0], 0.5),
    ("img2.jpg", 1, 11, [0.0, 0.0, 1.0], 2.0),
    ("img3.jpg", 2, 10, [3.0, 0.0, 0.0], 1.0),
    ("img4.jpg", 3, 30, [0.0, 4.0, 0.0], 1.0),
    ("img5.jpg", 3, 31, [0.0, 0.0, 1.0], 3.0),
]
PAIRS = [(1, 2, 1), (1, 3, 1), (2, 3, 0)]
FEATURES = np.array([image[3] for image in IMAGES])


def write_meta(meta_dir, prefix="ijbc", images=IMAGES, pairs=PAIRS):
    meta_dir.mkdir(parents=True, exist_ok=True)
    (meta_dir / f"{prefix}_face_tid_mid.txt").write_text(
        "".join(f"{name} {template} {media}\n" for name, template, media, _, _ in images))
    (meta_dir / f"{prefix}_name_5pts_score.txt").write_text(
        "".join(f"{name} " + " ".join(str(10.0 + k) for k in range(10)) + f" {score}\n"
                for name, _, _, _, score in images))
    (meta_dir / f"{prefix}_template_pair_label.txt").write_text("".join(f"{a} {b} {label}\n" for a, b, label in pairs))
    return meta_dir


def unit(vector):
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_read_ijb_meta_parses_all_three_files(tmp_path):
    meta = read_ijb_meta(write_meta(tmp_path / "meta", "ijbb"), "ijbb")
    assert meta.image_names == tuple(image[0] for image in IMAGES)
    np.testing.assert_array_equal(meta.template_ids, [1, 1, 1, 2, 3, 3])
    np.testing.assert_array_equal(meta.media_ids, [10, 10, 11, 10, 30, 31])
    np.testing.assert_allclose(meta.landmarks[0], np.arange(10.0, 20.0).reshape(5, 2))
    np.testing.assert_allclose(meta.detector_scores, [1.0, 0.5, 2.0, 1.0, 1.0, 3.0])
    np.testing.assert_array_equal(meta.pair_templates, [[1, 2], [1, 3], [2, 3]])
    np.testing.assert_array_equal(meta.pair_labels, [True, True, False])


def test_templates_are_media_means_summed_then_normalised():
    ids, medias = [image[1] for image in IMAGES], [image[2] for image in IMAGES]
    templates, template_ids = template_features(FEATURES, ids, medias)
    np.testing.assert_array_equal(template_ids, [1, 2, 3])
    # t1: mean(a, b) + c = [1, 1, 0] + [0, 0, 1]; t2: [3, 0, 0]; t3: [0, 4, 0] + [0, 0, 1].
    np.testing.assert_allclose(templates, [unit([1, 1, 1]), unit([1, 0, 0]), unit([0, 4, 1])])


def test_template_weighting_by_detector_score_and_without_feature_norm():
    ids, medias = [image[1] for image in IMAGES], [image[2] for image in IMAGES]
    scores = [image[4] for image in IMAGES]
    weighted, _ = template_features(FEATURES, ids, medias, detector_scores=scores)
    # t1: mean(1 a, 0.5 b) + 2 c = [1, 0.5, 0] + [0, 0, 2]; t3: [0, 4, 0] + 3 [0, 0, 1].
    np.testing.assert_allclose(weighted, [unit([1, 0.5, 2]), unit([1, 0, 0]), unit([0, 4, 3])])
    unit_features, _ = template_features(FEATURES, ids, medias, use_norm_score=False)
    # Image features normalised first: t1: mean([1,0,0], [0,1,0]) + [0,0,1]; t3: [0,1,0] + [0,0,1].
    np.testing.assert_allclose(unit_features, [unit([0.5, 0.5, 1]), unit([1, 0, 0]), unit([0, 1, 1])])


def test_evaluate_ijb_scores_template_pairs_by_cosine(tmp_path):
    meta = read_ijb_meta(write_meta(tmp_path / "meta"), "ijbc")
    result = evaluate_ijb(FEATURES, meta)  # norm and detector-score weighting, as insightface's defaults
    t1, t2, t3 = unit([1, 0.5, 2]), unit([1, 0, 0]), unit([0, 4, 3])
    np.testing.assert_allclose(result["scores"], [t1 @ t2, t1 @ t3, t2 @ t3])
    # Genuine 0.436 and 0.698 are above the only impostor score (0): TAR 1 at every FAR, AUC 1.
    assert result["tar_at_far"] == {far: 1.0 for far in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)}
    assert result["auc"] == pytest.approx(1.0)
    plain = evaluate_ijb(FEATURES, meta, use_norm_score=False, use_detector_score=False)
    s1, s3 = unit([0.5, 0.5, 1]), unit([0, 1, 1])
    np.testing.assert_allclose(plain["scores"], [s1 @ t2, s1 @ s3, t2 @ s3])


def test_pairs_with_unknown_templates_are_named():
    templates = np.eye(2)
    with pytest.raises(ValueError, match="7"):
        template_pair_scores(templates, np.array([1, 2]), np.array([[1, 2], [1, 7]]))


def test_malformed_meta_files_name_file_and_line(tmp_path):
    meta_dir = write_meta(tmp_path / "bad")
    (meta_dir / "ijbc_face_tid_mid.txt").write_text("img0.jpg 1 10\nimg1.jpg one 10\n")
    with pytest.raises(ValueError, match=r"ijbc_face_tid_mid.txt, line 2"):
        read_ijb_meta(meta_dir)
    write_meta(meta_dir)
    (meta_dir / "ijbc_template_pair_label.txt").write_text("1 2 1\n\n1 3 2\n")
    with pytest.raises(ValueError, match=r"ijbc_template_pair_label.txt, line 3: label"):
        read_ijb_meta(meta_dir)
    write_meta(meta_dir)
    (meta_dir / "ijbc_name_5pts_score.txt").write_text("img0.jpg 1 2 3\n")
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt, line 1"):
        read_ijb_meta(meta_dir)
    swapped = [IMAGES[1], IMAGES[0], *IMAGES[2:]]
    write_meta(meta_dir)
    (meta_dir / "ijbc_face_tid_mid.txt").write_text(
        "".join(f"{name} {template} {media}\n" for name, template, media, _, _ in swapped))
    with pytest.raises(ValueError, match="image order differs"):
        read_ijb_meta(meta_dir)
    with pytest.raises(FileNotFoundError, match="ijbb_face_tid_mid.txt"):
        read_ijb_meta(meta_dir, "ijbb")
    with pytest.raises(ValueError, match="image_features"):
        evaluate_ijb(FEATURES[:5], read_ijb_meta(write_meta(meta_dir)))
