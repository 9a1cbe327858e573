"""tools.make_tfrecords: folder / .npz conversion, annotation CSV, error handling, describe, real ORL faces."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfface.data import make_dataset, parse_example, read_description
from tools.make_tfrecords import histogram_lines, main

REPO = Path(__file__).resolve().parents[1]
# five landmarks in pixels of a 12 x 10 (h x w) image
POINTS = np.array([[2.0, 3.0], [7.0, 3.0], [4.5, 6.0], [3.0, 9.0], [6.5, 9.5]])


def normalised(pixel_value):
    return (pixel_value - 127.5) / 128.0


@pytest.fixture
def face_tree(tmp_path):
    """alice: a grey PNG and an RGB JPEG; bob: an RGB PNG, a corrupt PNG and a text file. Images are 12 x 10."""
    root = tmp_path / "faces"
    (root / "alice").mkdir(parents=True)
    (root / "bob").mkdir()
    Image.fromarray(np.full((12, 10), 50, np.uint8)).save(root / "alice" / "a.png")
    Image.fromarray(np.full((12, 10, 3), 90, np.uint8)).save(root / "alice" / "b.jpg", quality=95)
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    Image.fromarray(rgb).save(root / "bob" / "c.png")
    (root / "bob" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "bob" / "notes.txt").write_text("not a face")
    return root


def records(out_dir, prefix="train"):
    description = read_description(out_dir, prefix)
    files = [str(Path(out_dir) / name) for name in description["shards"]]
    return [parse_example(record) for record in tf.data.TFRecordDataset(files)]


def test_convert_folder_skips_corrupt_and_non_image_files(face_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--input", str(face_tree), "--out", str(out), "--shard-size", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "wrote 3 examples of 2 classes in 2 shard(s)" in stdout
    assert "skipped 2 file(s):" in stdout
    assert f"{face_tree / 'bob' / 'bad.png'}:" in stdout and f"{face_tree / 'bob' / 'notes.txt'}:" in stdout

    description = read_description(out)
    assert description["class_names"] == ["alice", "bob"]
    assert description["class_counts"] == {0: 2, 1: 1} and description["num_classes"] == 2
    assert description["image_size"] == [12, 10] and len(description["shards"]) == 2

    batch = next(iter(make_dataset(out, batch_size=3, training=False, features=("source_id",))))
    assert batch["source_id"].numpy().tolist() == [b"alice/a.png", b"alice/b.jpg", b"bob/c.png"]
    assert batch["label"].numpy().tolist() == [0, 0, 1]
    np.testing.assert_array_equal(batch["image"][0].numpy(), np.full((12, 10, 3), normalised(50.0)))  # grey -> 3
    np.testing.assert_allclose(batch["image"][1].numpy(), normalised(90.0), atol=3 / 128)  # JPEG source
    np.testing.assert_array_equal(batch["image"][2, 0, 0].numpy(), normalised(np.array([10.0, 20.0, 30.0])))


def test_convert_with_annotation_csv_and_resize(face_tree, tmp_path, capsys):
    header = ["path"] + [f"{axis}{i}" for i in range(5) for axis in "xy"] + ["yaw", "pitch", "roll",
                                                                             "light_az", "attr_smile", "note"]
    rows = [
        ["alice/a.png", *POINTS.ravel(), 20, -5, 3, 45, 1, "x"],
        ["alice/b.jpg", *(POINTS + 1).ravel(), 0, 0, 0, -45, 0, "y"],
        ["bob/c.png", *(POINTS + 2).ravel(), -10, 5, 0, 0, 1, "z"],
        ["bob/missing.png", *POINTS.ravel(), 0, 0, 0, 0, 0, ""],
    ]
    csv_path = tmp_path / "annotations.csv"
    csv_path.write_text("\n".join(",".join(str(value) for value in row) for row in [header, *rows]) + "\n")
    out = tmp_path / "out"
    arguments = ["convert", "--input", str(face_tree), "--out", str(out), "--landmarks", str(csv_path),
                 "--size", "24", "20", "--format", "jpeg"]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert "ignoring columns ['note']" in captured.err
    assert "annotations: 3 of 3 examples have a row" in captured.out and "1 rows matched no" in captured.out

    description = read_description(out)
    assert description["image_size"] == [24, 20] and description["image_format"] == "jpeg"
    assert description["num_landmarks"] == 5
    assert all(description["has"][name] for name in ("landmarks", "pose", "light", "attributes"))
    stored = records(out)
    # resize 12 x 10 -> 24 x 20 doubles both pixel coordinates
    np.testing.assert_allclose(stored[0]["landmarks"].numpy(), POINTS * 2, rtol=1e-6)
    np.testing.assert_allclose(stored[2]["landmarks"].numpy(), (POINTS + 2) * 2, rtol=1e-6)
    np.testing.assert_array_equal(stored[0]["pose"].numpy(), [20, -5, 3])
    np.testing.assert_array_equal(stored[1]["light"].numpy(), [-45])
    np.testing.assert_array_equal(stored[2]["attributes"].numpy(), [1])
    assert stored[0]["image"].shape == (24, 20, 3)


def test_convert_npz(tmp_path, capsys):
    images = np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5)
    np.savez(tmp_path / "tiny.npz", images=images, labels=np.array([0, 2, 2, 1]))
    out = tmp_path / "out"
    assert main(["convert", "--input", str(tmp_path / "tiny.npz"), "--out", str(out)]) == 0
    description = read_description(out)
    assert description["num_classes"] == 3 and description["class_counts"] == {0: 1, 1: 1, 2: 2}
    assert description["image_size"] == [6, 5] and description["class_names"] is None
    stored = records(out)
    assert [r["source_id"].numpy() for r in stored] == [b"tiny.npz#0", b"tiny.npz#1", b"tiny.npz#2", b"tiny.npz#3"]
    for index, record in enumerate(stored):
        np.testing.assert_array_equal(record["image"].numpy(), np.repeat(images[index][:, :, None], 3, axis=2))

    np.savez(tmp_path / "unlabelled.npz", images=images)
    assert main(["convert", "--input", str(tmp_path / "unlabelled.npz"), "--out", str(out)]) == 2
    assert "lacks arrays ['labels']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "input not found: {root}"),
        (lambda root: root.mkdir(), "no image files found in {root}"),
        (lambda root: (root / "empty_identity").mkdir(parents=True), "no image files found in {root}"),
        (lambda root: ((root / "a").mkdir(parents=True), (root / "a" / "x.txt").write_text("?")),
         "no readable images in {root} (1 files skipped)"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, setup, message):
    root = tmp_path / "faces"
    setup(root)
    assert main(["convert", "--input", str(root), "--out", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err
    error_lines = [line for line in stderr.splitlines() if line.startswith("make_tfrecords:")]
    assert len(error_lines) == 1 and "Traceback" not in stderr
    assert error_lines[0].startswith(f"make_tfrecords: error: {message.format(root=root)}")
    assert not (tmp_path / "out" / "train.json").exists()


def test_bad_annotation_csv_names_file_and_line(face_tree, tmp_path, capsys):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,x0,y0\nalice/a.png,1,2\nbob/c.png,three,4\n")
    assert main(["convert", "--input", str(face_tree), "--out", str(tmp_path / "out"),
                 "--landmarks", str(csv_path)]) == 2
    assert f"{csv_path}, line 3: column x0: 'three' is not a number" in capsys.readouterr().err
    csv_path.write_text("path,x0,y0,x1\n")
    assert main(["convert", "--input", str(face_tree), "--out", str(tmp_path / "out"),
                 "--landmarks", str(csv_path)]) == 2
    assert "landmark columns must be x0, y0" in capsys.readouterr().err


def test_command_line_missing_folder_has_no_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "tools.make_tfrecords", "convert", "--input", str(missing), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"make_tfrecords: error: input not found: {missing}"]


def test_describe_prints_counts_features_and_histogram(face_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--input", str(face_tree), "--out", str(out), "--prefix", "dev"]) == 0
    capsys.readouterr()
    assert main(["describe", str(out), "--prefix", "dev"]) == 0
    stdout = capsys.readouterr().out
    assert "examples: 3 in 1 shard(s)" in stdout
    assert "classes: 2 (examples per class: min 1, median 1.5, max 2)" in stdout
    assert "image size: 12 x 10 (h x w), png" in stdout and "features: none" in stdout
    assert "class names: alice, bob" in stdout
    assert stdout.rstrip().splitlines()[-2:] == histogram_lines([2, 1])
    assert main(["describe", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_histogram_lines_by_hand():
    # sizes 1..5 fit in 10 bins of width 1; the fullest bin (2 classes) gets the 40-character bar
    assert histogram_lines([1, 2, 2, 5]) == [
        "  1 | #################### 1",
        "  2 | ######################################## 2",
        "  3 | 0",
        "  4 | 0",
        "  5 | #################### 1",
    ]
    # sizes 0..24: 25 values in bins of width ceil(25 / 10) = 3
    lines = histogram_lines(list(range(25)))
    assert len(lines) == 9 and lines[0].split("|")[0].strip() == "0-2" and lines[-1].endswith("# 1")


def test_convert_orl_and_read_a_batch(shared_data, tmp_path):
    out = tmp_path / "orl"
    assert main(["convert", "--input", str(shared_data / "orl"), "--out", str(out), "--shard-size", "150"]) == 0
    description = read_description(out)
    assert description["num_examples"] == 400 and description["num_classes"] == 40
    assert description["image_size"] == [112, 92] and len(description["shards"]) == 3
    assert description["class_names"][:3] == ["s1", "s10", "s11"]  # labels follow sorted folder names
    assert set(description["class_counts"].values()) == {10}
    batch = next(iter(make_dataset(out, batch_size=8, seed=0)))
    assert batch["image"].shape == (8, 112, 92, 3)
    np.testing.assert_array_equal(batch["image"][..., 0].numpy(), batch["image"][..., 2].numpy())  # grey source
    assert -1.0 < batch["image"].numpy().min() < batch["image"].numpy().max() < 1.0


def _align_output(root: Path, sizes) -> Path:
    """The layout tools.align --out writes: align_report.csv, HxW/<identity>/<photo>.png and HxW.csv per size;
    the CSV annotates the first photo only (the second is a centre crop, which gets no row)."""
    root.mkdir()
    (root / "align_report.csv").write_text("path,status,faces,confidence,detail\n")
    for height, width in sizes:
        for name in ("alice/1.png", "alice/2.png", "bob/1.png"):
            (root / f"{height}x{width}" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((height, width, 3), 80, np.uint8)).save(root / f"{height}x{width}" / name)
        header = "path," + ",".join(f"x{i},y{i}" for i in range(5))
        rows = [f"{name}," + ",".join(str(value) for value in POINTS.ravel()) for name in ("alice/1.png", "bob/1.png")]
        (root / f"{height}x{width}.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_an_align_output_folder_converts_its_112x112_crops_and_says_when_annotations_are_partial(tmp_path, capsys):
    aligned = _align_output(tmp_path / "aligned", [(112, 112), (112, 96)])
    assert main(["convert", "--input", str(aligned), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert (f"{aligned} is a tools.align output folder: converting {aligned / '112x112'} with the annotations "
            f"{aligned / '112x112.csv'}") in stdout
    assert "wrote 3 examples of 2 classes" in stdout
    assert "annotations: 2 of 3 examples have a row" in stdout
    warning = next(line for line in stdout.splitlines() if line.startswith("warning:"))
    assert warning.startswith(f"warning: 1 example(s) have no row in {aligned / '112x112.csv'}, so no example "
                              "carries landmarks for training")
    assert "tools.align --no-face skip" in warning and "--set data.features=[]" in warning
    description = read_description(tmp_path / "out")
    assert description["class_names"] == ["alice", "bob"] and description["image_size"] == [112, 112]
    assert not description["has"]["landmarks"] and description["present_counts"]["landmarks"] == 2

    assert main(["convert", "--input", str(aligned), "--out", str(tmp_path / "out96"), "--size", "112", "96"]) == 0
    assert read_description(tmp_path / "out96")["image_size"] == [112, 96]


def test_an_align_output_folder_without_the_crop_size_is_one_error_line(tmp_path, capsys):
    aligned = _align_output(tmp_path / "aligned", [(112, 96), (56, 48)])
    assert main(["convert", "--input", str(aligned), "--out", str(tmp_path / "out")]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert error_lines == [
        f"make_tfrecords: error: {aligned} is a tools.align output folder with the crop folders 112x96, 56x48: "
        f"convert one of them (--input {aligned / '112x96'} --landmarks {aligned / '112x96'}.csv; --input "
        f"{aligned / '56x48'} --landmarks {aligned / '56x48'}.csv), or pick one with --size H W"]
    assert not (tmp_path / "out").exists()
