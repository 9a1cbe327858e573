"""tfface.data.image_io: folder listing, per-file read errors, EXIF orientation, atomic writes."""
import os

import numpy as np
import pytest
from PIL import Image

from tfface.atomic import write_bytes
from tfface.data.image_io import UnreadableImageError, list_files, read_rgb, write_png_atomic


def test_list_files_is_recursive_sorted_and_skips_hidden(tmp_path):
    for name in ("b/2.png", "a/1.png", "top.jpg", ".hidden/x.png", "a/.DS_Store"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_files(tmp_path) == ["a/1.png", "b/2.png", "top.jpg"]
    with pytest.raises(NotADirectoryError, match="input folder not found"):
        list_files(tmp_path / "missing")


def test_list_files_follows_symlinked_identity_folders_and_not_their_loops(tmp_path):
    """photos/carol -> elsewhere/carol (an identity kept elsewhere), and two loops: carol/again -> carol itself,
    carol/up -> photos; the listing is what one walk of the real folders under the link names gives."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere" / "carol"
    for folder, name in ((photos / "alice", "1.png"), (elsewhere / "frontal", "2.png")):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x")
    (photos / "carol").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "again").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "up").symlink_to(photos, target_is_directory=True)
    assert list_files(photos) == ["alice/1.png", "carol/frontal/2.png"]


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"hello, not an image", "not an image file"), (b"\x89PNG\r\n\x1a\n cut", "not an image")],
)
def test_bad_files_raise_with_their_path_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=reason) as caught:
        read_rgb(path)
    assert caught.value.path == path and str(caught.value).startswith(f"{path}: ")


def test_truncated_and_too_large_images_are_refused(tmp_path):
    Image.fromarray(np.full((40, 50, 3), 99, np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="cannot read"):
        read_rgb(tmp_path / "cut.png")
    with pytest.raises(UnreadableImageError, match="too large: 50 x 40 = 2000 pixels"):
        read_rgb(tmp_path / "ok.png", max_pixels=1999)
    assert read_rgb(tmp_path / "ok.png", max_pixels=2000).shape == (40, 50, 3)


def test_grey_becomes_rgb_and_exif_orientation_is_applied(tmp_path):
    Image.fromarray(np.full((4, 6), 7, np.uint8)).save(tmp_path / "grey.png")
    assert read_rgb(tmp_path / "grey.png").shape == (4, 6, 3)

    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 5] = 255  # a white pixel at the top right, stored sideways with "rotate 90 clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "sideways.png", exif=exif)
    upright = read_rgb(tmp_path / "sideways.png")
    assert upright.shape == (6, 4, 3) and upright[5, 3].tolist() == [255, 255, 255]


def test_atomic_writes_leave_only_the_finished_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "deep" / "crop.png"
    write_png_atomic(target, np.full((3, 5, 3), 40, np.uint8))
    assert np.asarray(Image.open(target)).shape == (3, 5, 3)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    with pytest.raises(TypeError):  # the write fails half-way: the temporary file goes, nothing else appears
        write_bytes(tmp_path / "deep" / "other.bin", "text, not bytes")
    assert sorted(path.name for path in (tmp_path / "deep").iterdir()) == ["crop.png"]
