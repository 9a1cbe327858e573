"""serving.client --align: photos are detected and aligned by the client (tfface.faces.FaceAligner) and the crops
are embedded by the server, equal to the local analyzer's embeddings; a photo without a face is left out and named
(CFP photos, skipped without ../shared/data)."""
import numpy as np

from serving.client import main as client_main
from serving.server import ModelServer
from tfface.faces import FaceAnalyzer

from test_faces import export_tiny, photos  # noqa: F401 - the photos fixture


def test_client_align_sends_the_crops_of_the_central_faces(photos, tmp_path, capsys):  # noqa: F811
    version = export_tiny(tmp_path / "models")
    out = tmp_path / "emb.npy"
    files = [str(photos["first"]), str(photos["empty"]), str(photos["second"])]
    with ModelServer({"tiny": str(version.parent)}, host="127.0.0.1", port=0) as server:
        target = f"127.0.0.1:{server.port}"
        assert client_main(["--target", target, "--model", "tiny", "--out", str(out), "--align", *files]) == 0
        assert f"no face found in 1 photo(s), left out:\n  {photos['empty']}" in capsys.readouterr().err
        assert client_main(["--target", target, "--model", "tiny", "--out", str(out), files[0]]) == 2
        assert "give --align to detect and align its face" in capsys.readouterr().err
    assert out.with_suffix(".txt").read_text().splitlines() == [files[0], files[2]]
    local, _ = FaceAnalyzer(version, flip=False).central_embeddings([files[0], files[2]])
    np.testing.assert_allclose(np.load(out), np.stack(local), atol=1e-5)
