"""tfface.gallery and tools.gallery: the blocked top-k search against a full sort, a gallery built twice is
identical, appending, and a search's CSV and HTML (CFP photos, skipped without ../shared/data)."""
import csv
import shutil

import numpy as np
import pytest

from tfface.errors import ConfigError
from tfface.gallery import Gallery, top_k_search, write_gallery
from tools.gallery import main as gallery_main

from test_faces import export_tiny


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_blocked_top_k_equals_a_full_sort():
    rng = np.random.default_rng(0)
    index = unit(rng.normal(size=(1000, 16))).astype(np.float16)
    probes = unit(rng.normal(size=(7, 16))).astype(np.float32)
    indices, scores = top_k_search(index, probes, k=5, block_rows=128)  # 8 blocks, the last one short
    full = probes.astype(np.float64) @ index.astype(np.float64).T
    expected = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), atol=1e-6)
    few, few_scores = top_k_search(index[:3], probes, k=5, block_rows=2)  # k larger than the index
    np.testing.assert_array_equal(few, np.argsort(-full[:, :3], axis=1))
    assert few_scores.shape == (7, 3)
    with pytest.raises(ValueError, match=r"probes must be \[M, 16\]"):
        top_k_search(index, probes[:, :8], k=1)


def test_write_and_open_check_the_files(tmp_path):
    embeddings = unit(np.random.default_rng(1).normal(size=(4, 6)))
    gallery = write_gallery(tmp_path / "g", embeddings, list("aabc"), ["1", "2", "3", "4"], {"source": "m"})
    assert isinstance(gallery.embeddings, np.memmap) and gallery.embeddings.dtype == np.float32
    np.testing.assert_allclose(gallery.embeddings, embeddings, atol=1e-7)
    assert gallery.names == list("aabc") and len(gallery) == 4
    with pytest.raises(ConfigError, match="no gallery.json"):
        Gallery.open(tmp_path)
    entries = next((tmp_path / "g").glob("entries-*.csv"))
    entries.write_text("name,photo\na,1\n")
    with pytest.raises(ConfigError, match="expected the header name,photo and 4 rows"):
        Gallery.open(tmp_path / "g")


@pytest.fixture
def people(shared_data, tmp_path):
    """people/<id>/<photo>.jpg: two CFP identities with two frontal photos each; probes/: one of those photos."""
    source = shared_data / "cfp" / "images"
    for identity in ("001", "002"):
        for photo in ("01.jpg", "02.jpg"):
            target = tmp_path / "people" / identity / photo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / identity / "frontal" / photo, target)
    target = tmp_path / "more" / "003" / "01.jpg"
    target.parent.mkdir(parents=True)
    shutil.copy(source / "003" / "frontal" / "01.jpg", target)
    (tmp_path / "probes").mkdir()
    shutil.copy(source / "002" / "frontal" / "02.jpg", tmp_path / "probes" / "someone.jpg")
    return tmp_path


def gallery_files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_gallery_built_twice_is_identical_appends_and_is_searched(people, capsys):
    model = export_tiny(people / "model")
    for out in ("g1", "g2"):
        assert gallery_main(["build", "--images", str(people / "people"), "--model", str(model),
                             "--out", str(people / out)]) == 0
    assert "4 entries of 2 identities (4 added, 0 already there, 0 left out)" in capsys.readouterr().out
    first = gallery_files(people / "g1")
    assert first == gallery_files(people / "g2") and len(first) == 3

    assert gallery_main(["build", "--images", str(people / "people"), "--model", str(model),
                         "--out", str(people / "g1")]) == 2
    assert "is already a gallery: add --append" in capsys.readouterr().err
    assert gallery_main(["build", "--images", str(people / "more"), "--model", str(model), "--out",
                         str(people / "g1"), "--append"]) == 0
    assert gallery_main(["build", "--images", str(people / "people"), "--model", str(model), "--out",
                         str(people / "g1"), "--append"]) == 0  # photos already there are skipped
    assert "5 entries of 3 identities (0 added, 4 already there" in capsys.readouterr().out
    gallery = Gallery.open(people / "g1")
    assert gallery.names == ["001", "001", "002", "002", "003"] and len(list((people / "g1").iterdir())) == 3

    assert gallery_main(["search", str(people / "probes"), "--gallery", str(people / "g1"), "--k", "3",
                         "--threshold", "0.5", "--out", str(people / "found")]) == 0
    with open(people / "found" / "matches.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["rank"] for row in rows] == ["1", "2", "3"] and rows[0]["probe"] == "someone.jpg"
    # the probe is the gallery's 002/02.jpg: itself first, score 1
    assert rows[0]["name"] == "002" and rows[0]["photo"].endswith("002/02.jpg")
    assert float(rows[0]["score"]) == pytest.approx(1.0, abs=1e-4) and rows[0]["same"] == "1"
    assert [float(row["score"]) for row in rows] == sorted((float(row["score"]) for row in rows), reverse=True)
    page = (people / "found" / "matches.html").read_text()
    assert page.count("<img ") == 4 and "someone.jpg" in page  # the probe's face and its 3 matches
