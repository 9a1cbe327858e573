"""tfface.faces and tools.verify on real photos (CFP, skipped without ../shared/data): every face of a photo with
two, a photo without a face as a clear result, decisions and exit codes, a model without a calibrated threshold."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfface import backbones
from tfface.calibration import Calibration, write_calibration
from tfface.data.alignment import alignment_matrix, warp_similarity
from tfface.embedders import load_embedder
from tfface.errors import ConfigError
from tfface.export import export_backbone
from tfface.faces import FaceAnalyzer
from tools.verify import main as verify_main

INPUT = (28, 28, 3)  # the ArcFace 112 x 112 template scaled by 1/4


def export_tiny(folder: Path) -> Path:
    backbone = backbones.get_backbone("tiny", input_shape=INPUT, embedding_size=8, width=4)
    return export_backbone(backbone, folder / "tiny" / "1", {"backbone": "tiny", "input_shape": list(INPUT)})


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def analyzer(model) -> FaceAnalyzer:
    return FaceAnalyzer(model, threshold=0.5)


@pytest.fixture
def photos(shared_data, tmp_path) -> dict:
    """Two CFP frontal photos of different people, both side by side in one photo, and a photo without a face."""
    folder = shared_data / "cfp" / "images"
    first = Image.open(folder / "001" / "frontal" / "01.jpg").convert("RGB").resize((160, 200))
    second = Image.open(folder / "002" / "frontal" / "01.jpg").convert("RGB").resize((160, 200))
    pair = Image.new("RGB", (340, 200), "grey")
    pair.paste(first, (0, 0))
    pair.paste(second, (180, 0))
    paths = {"first": tmp_path / "first.png", "second": tmp_path / "second.png", "pair": tmp_path / "pair.png",
             "empty": tmp_path / "empty.png"}
    first.save(paths["first"])
    second.save(paths["second"])
    pair.save(paths["pair"])
    ramp = np.tile(np.linspace(40, 220, 200).astype(np.uint8)[None, :, None], (150, 1, 3))
    Image.fromarray(ramp).save(paths["empty"])
    return paths


def test_a_photo_with_two_faces_returns_both_and_one_without_returns_none(analyzer, photos, model):
    pair, empty, first = analyzer.embed([photos["pair"], photos["empty"], photos["first"]])
    assert empty == []
    assert len(pair) == 2 and len(first) == 1
    centres = sorted((face.box[0] + face.box[2]) / 2 for face in pair)
    assert centres[0] < 160 < 180 < centres[1]  # one face in each half
    for face in pair + first:
        assert face.embedding.shape == (8,) and face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.box.shape == (4,) and face.landmarks.shape == (5, 2) and 0.8 <= face.score <= 1.0
        x0, y0, x1, y1 = face.box
        assert np.all((face.landmarks[:, 0] > x0) & (face.landmarks[:, 0] < x1))
        assert np.all((face.landmarks[:, 1] > y0) & (face.landmarks[:, 1] < y1))
    # the left face of the pair is the first photo's face: its embedding is the model's on its aligned crop,
    # warped here with the landmarks found and summed with its mirror's
    left = min(pair, key=lambda face: face.box[0])
    image = np.asarray(Image.open(photos["pair"]))
    crop = warp_similarity(image, alignment_matrix(left.landmarks, INPUT[:2]), INPUT[:2])
    expected = load_embedder(model)(crop[None], flip=True)[0]
    np.testing.assert_allclose(left.embedding, expected, atol=1e-5)


def test_verify_scores_decides_and_names_a_photo_without_a_face(analyzer, photos):
    same = analyzer.verify(photos["first"], photos["first"])
    assert same.score == pytest.approx(1.0, abs=1e-5) and same.same is True and same.threshold == 0.5
    assert same.faces == (1, 1) and same.missing == ""
    result = analyzer.verify(photos["first"], photos["empty"])
    assert result.score is None and result.same is None and result.missing == "B" and result.faces == (1, 0)


def test_tools_verify_exit_codes_and_one_line_errors(model, photos, capsys, tmp_path):
    first, second, empty = (str(photos[key]) for key in ("first", "second", "empty"))
    assert verify_main([first, first, "--model", str(model), "--threshold", "0.5"]) == 0
    assert capsys.readouterr().out.strip().endswith("(given): same person")
    # a threshold above any cosine: different people, exit 1
    assert verify_main([first, second, "--model", str(model), "--threshold", "1.01", "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["same"] is False and printed["threshold"] == 1.01 and -1 <= printed["score"] <= 1

    cases = [
        ([first, empty, "--model", str(model), "--threshold", "0.5"], f"verify: error: no face found in B ({empty})"),
        ([first, first, "--model", str(model)],
         f"verify: error: model {model} has no calibrated threshold: run python -m tools.evaluate --model {model}"),
        ([first, str(tmp_path / "nowhere.jpg"), "--model", str(model), "--threshold", "0.5"],
         f"verify: error: photo B not found: {tmp_path / 'nowhere.jpg'}"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert verify_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err


def test_verify_uses_the_calibrated_threshold(tmp_path, photos, capsys):
    model = export_tiny(tmp_path)
    record = Calibration("cfp", "pairs.csv", 10, 5, "sum", 0.9, 0.05, threshold=0.3, accuracy=0.9, far_target=1e-3,
                         far_threshold=0.999, far=0.0, tar=0.5)
    write_calibration(model, record)
    assert FaceAnalyzer(model).threshold == 0.3 and FaceAnalyzer(model, threshold="far").threshold == 0.999
    assert verify_main([str(photos["first"]), str(photos["first"]), "--model", str(model)]) == 0
    assert "threshold 0.3000 (best accuracy on cfp): same person" in capsys.readouterr().out
    assert verify_main([str(photos["first"]), str(photos["second"]), "--model", str(model), "--threshold", "far"]) == 1
    assert "(FAR 0.001 on cfp): different people" in capsys.readouterr().out


def test_a_model_input_without_an_arcface_template_is_refused(tmp_path):
    backbone = backbones.get_backbone("tiny", input_shape=(20, 16, 3), embedding_size=8, width=4)
    path = export_backbone(backbone, tmp_path / "odd" / "1", {})
    with pytest.raises(ConfigError, match=r"input \[20, 16\] has no ArcFace template"):
        FaceAnalyzer(path)
