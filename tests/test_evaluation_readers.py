"""Benchmark readers on tiny files of each published layout, built here (the real benchmarks are not shipped)."""
import io
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from tfface.evaluation import PairList, load_bin, load_images, read_cfp_pairs, read_lfw_pairs, read_pairs_csv


def write_image(path, seed, size=(4, 5)):
    """Writes a random RGB image of size (height, width) and returns its pixels uint8 [H, W, 3]."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def lfw_tree(root):
    """Alice_0001..3 and Carol_0001 as .jpg, Bob_0001..2 as .png."""
    for name, number, extension in [("Alice", 1, "jpg"), ("Alice", 2, "jpg"), ("Alice", 3, "jpg"),
                                    ("Bob", 1, "png"), ("Bob", 2, "png"), ("Carol", 1, "jpg")]:
        write_image(root / name / f"{name}_{number:04d}.{extension}", seed=number)
    return root


def test_lfw_pairs_with_header_give_paths_labels_and_folds(tmp_path):
    images = lfw_tree(tmp_path / "lfw")
    pairs_path = tmp_path / "pairs.txt"
    pairs_path.write_text("2\t1\nAlice\t1\t2\nAlice\t1\tBob\t1\nBob\t1\t2\nCarol\t1\tAlice\t3\n")
    pairs = read_lfw_pairs(pairs_path, images)
    assert list(pairs) == [
        (str(images / "Alice/Alice_0001.jpg"), str(images / "Alice/Alice_0002.jpg"), True, 0),
        (str(images / "Alice/Alice_0001.jpg"), str(images / "Bob/Bob_0001.png"), False, 0),
        (str(images / "Bob/Bob_0001.png"), str(images / "Bob/Bob_0002.png"), True, 1),
        (str(images / "Carol/Carol_0001.jpg"), str(images / "Alice/Alice_0003.jpg"), False, 1),
    ]


def test_lfw_pairs_without_header_in_any_order_have_no_folds(tmp_path):
    images = lfw_tree(tmp_path / "lfw")
    pairs_path = tmp_path / "pairs.txt"
    pairs_path.write_text("Carol 1 Alice 3\n\nAlice 2 3\nAlice 1 Bob 2\n")
    pairs = read_lfw_pairs(pairs_path, images)
    assert pairs.folds is None
    np.testing.assert_array_equal(pairs.issame, [False, True, False])
    assert pairs.paths2[2] == str(images / "Bob/Bob_0002.png")


def test_lfw_errors_name_file_line_and_missing_image(tmp_path):
    images = lfw_tree(tmp_path / "lfw")
    pairs_path = tmp_path / "pairs.txt"
    pairs_path.write_text("Alice 1 2\nAlice 1 Bob\n")
    with pytest.raises(ValueError, match=r"pairs.txt, line 2: expected"):
        read_lfw_pairs(pairs_path, images)
    pairs_path.write_text("Alice 1 2\nAlice 1 Dave 1\n")
    with pytest.raises(FileNotFoundError, match=r"line 2: image not found: .*Dave_0001.jpg or .*Dave_0001.png"):
        read_lfw_pairs(pairs_path, images)
    pairs_path.write_text("10 300\nAlice 1 2\n")
    with pytest.raises(ValueError, match="header promises 10 folds"):
        read_lfw_pairs(pairs_path, images)


def test_pair_list_image_index_and_load_images(tmp_path):
    first = write_image(tmp_path / "a.png", seed=1)
    second = write_image(tmp_path / "b.png", seed=2)
    pairs = PairList((str(tmp_path / "a.png"), str(tmp_path / "b.png")), (str(tmp_path / "b.png"),
                     str(tmp_path / "a.png")), np.array([True, False]))
    paths, index1, index2 = pairs.image_index()
    assert paths == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    np.testing.assert_array_equal(index1, [0, 1])
    np.testing.assert_array_equal(index2, [1, 0])
    np.testing.assert_array_equal(load_images(paths), np.stack([first, second]))
    assert load_images(paths, image_size=(8, 6)).shape == (2, 8, 6, 3)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_images([str(tmp_path / "missing.png")])


def encoded_png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_bin_decodes_images_and_issame(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    path = tmp_path / "toy.bin"
    with open(path, "wb") as handle:
        pickle.dump(([encoded_png(image) for image in pixels], [True, False]), handle, protocol=2)
    images, issame = load_bin(path)
    np.testing.assert_array_equal(images, pixels)
    np.testing.assert_array_equal(issame, [True, False])
    resized, _ = load_bin(path, image_size=(12, 10))
    assert resized.shape == (4, 12, 10, 3) and resized.dtype == np.uint8


def test_load_bin_errors_name_the_file_and_image(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="bad.bin is not an insightface .bin"):
        load_bin(path)
    with open(path, "wb") as handle:
        pickle.dump(([encoded_png(np.zeros((2, 2, 3), np.uint8))] * 3, [True, False]), handle)
    with pytest.raises(ValueError, match="3 images for 2 pairs"):
        load_bin(path)
    with open(path, "wb") as handle:
        pickle.dump(([encoded_png(np.zeros((2, 2, 3), np.uint8)), b"garbage"], [True]), handle)
    with pytest.raises(ValueError, match="bad.bin, image 1"):
        load_bin(path)


def cfp_tree(root):
    """Two identities, each with frontal 01-02 and profile 01; Split folders 01 and 02 for FF and FP."""
    for person in ("001", "002"):
        for pose, number in [("frontal", "01"), ("frontal", "02"), ("profile", "01")]:
            write_image(root / "Data" / "Images" / person / pose / f"{number}.jpg", seed=int(person))
    protocol = root / "Protocol"
    protocol.mkdir()
    (protocol / "Pair_list_F.txt").write_text("".join(
        f"{index} ../Data/Images/{person}/frontal/{number}.jpg\n"
        for index, (person, number) in enumerate([("001", "01"), ("001", "02"), ("002", "01"), ("002", "02")], 1)))
    (protocol / "Pair_list_P.txt").write_text(
        "1 ../Data/Images/001/profile/01.jpg\n2 ../Data/Images/002/profile/01.jpg\n")
    splits = {"FF": {"01": ("1,2", "1,3"), "02": ("3,4", "2,4")}, "FP": {"01": ("1,1", "1,2"), "02": ("4,2", "3,1")}}
    for name, folds in splits.items():
        for fold, (same, diff) in folds.items():
            (protocol / "Split" / name / fold).mkdir(parents=True)
            (protocol / "Split" / name / fold / "same.txt").write_text(same + "\n")
            (protocol / "Split" / name / fold / "diff.txt").write_text(diff + "\n")
    return root


def test_cfp_fp_and_ff_protocols(tmp_path):
    root = cfp_tree(tmp_path / "cfp")
    images = root / "Data" / "Images"
    fp = read_cfp_pairs(root, "FP")
    assert list(fp) == [
        (str(images / "001/frontal/01.jpg"), str(images / "001/profile/01.jpg"), True, 0),
        (str(images / "001/frontal/01.jpg"), str(images / "002/profile/01.jpg"), False, 0),
        (str(images / "002/frontal/02.jpg"), str(images / "002/profile/01.jpg"), True, 1),
        (str(images / "002/frontal/01.jpg"), str(images / "001/profile/01.jpg"), False, 1),
    ]
    ff = read_cfp_pairs(root, "FF")
    assert ff.paths2[1] == str(images / "002/frontal/01.jpg")
    np.testing.assert_array_equal(ff.folds, [0, 0, 1, 1])
    (root / "Protocol/Split/FP/02/diff.txt").write_text("3,9\n")
    with pytest.raises(ValueError, match=r"FP/02/diff.txt, line 1: id 9 is not in .*Pair_list_P.txt"):
        read_cfp_pairs(root, "FP")
    (root / "Protocol/Split/FP/02/diff.txt").write_text("3;1\n")
    with pytest.raises(ValueError, match=r"diff.txt, line 1: expected 'i,j'"):
        read_cfp_pairs(root, "FP")
    (images / "002/profile/01.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"Pair_list_P.txt, line 2: image not found: .*002/profile/01.jpg"):
        read_cfp_pairs(root, "FP")


def test_pairs_csv_with_and_without_header(tmp_path):
    write_image(tmp_path / "img" / "a.png", 1)
    write_image(tmp_path / "img" / "b.png", 2)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("path1,path2,issame,fold\nimg/a.png,img/b.png,1,0\nimg/b.png,img/a.png,false,1\n")
    pairs = read_pairs_csv(csv_path)
    assert list(pairs) == [(str(tmp_path / "img/a.png"), str(tmp_path / "img/b.png"), True, 0),
                           (str(tmp_path / "img/b.png"), str(tmp_path / "img/a.png"), False, 1)]
    csv_path.write_text("a.png,b.png,true\n")
    pairs = read_pairs_csv(csv_path, image_root=tmp_path / "img")
    assert pairs.folds is None and pairs.paths1 == (str(tmp_path / "img/a.png"),)
    csv_path.write_text("a.png,b.png,1\na.png,b.png,maybe\n")
    with pytest.raises(ValueError, match=r"pairs.csv, line 2: issame"):
        read_pairs_csv(csv_path, image_root=tmp_path / "img")
    csv_path.write_text("a.png,c.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"line 1: image not found: .*c.png"):
        read_pairs_csv(csv_path, image_root=tmp_path / "img")


def test_real_orl_faces_through_csv_reader_and_evaluate_pairs(shared_data, tmp_path):
    """Pipeline on real faces: pairs CSV over ORL -> load_images -> pixel embeddings with flip -> 10-fold numbers."""
    from tfface.evaluation import evaluate_pairs, flip_test_embeddings

    rng = np.random.default_rng(0)
    rows = ["path1,path2,issame,fold"]
    for index in range(200):
        subject = 1 + index % 40
        if index % 2 == 0:
            first, second = rng.choice(10, size=2, replace=False) + 1
            rows.append(f"s{subject}/{first}.png,s{subject}/{second}.png,1,{index // 20}")
        else:
            other = 1 + (subject + rng.integers(1, 40) - 1) % 40
            rows.append(f"s{subject}/{rng.integers(1, 11)}.png,s{other}/{rng.integers(1, 11)}.png,0,{index // 20}")
    csv_path = tmp_path / "orl_pairs.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    pairs = read_pairs_csv(csv_path, image_root=shared_data / "orl")
    paths, index1, index2 = pairs.image_index()
    images = load_images(paths, image_size=(28, 23)).astype(np.float32) / 255.0
    embeddings = flip_test_embeddings(lambda batch: batch.reshape(len(batch), -1) - 0.5, images, mode="sum")
    result = evaluate_pairs(embeddings[index1], embeddings[index2], pairs.issame, folds=pairs.folds)
    assert len(result["fold_accuracies"]) == 10
    assert result["accuracy_mean"] > 0.75 and result["auc"] > 0.8


@pytest.mark.parametrize(
    "layout, text, message",
    [
        ("lfw", "Alice 1 2\nAlice one 2\n", r"pairs.txt, line 2: expected 'name n1 n2' or 'name1 n1 name2 n2', "
                                            r"got 'Alice one 2'"),
        ("lfw", "1 2\nAlice 1 2\nAlice 1 Bob 1 extra\n", r"pairs.txt, line 3: expected 'name n1 n2'"),
        ("cfp_list", "1 ../Data/Images/001/frontal/01.jpg\n\n2\n", r"Pair_list_F.txt, line 3: expected 'id path', "
                                                                   r"got '2'"),
        ("cfp_list", "x ../Data/Images/001/frontal/01.jpg\n", r"Pair_list_F.txt, line 1: expected 'id path'"),
        ("cfp_split", "1,2\n1,2,3\n", r"FF/01/same.txt, line 2: expected 'i,j', got '1,2,3'"),
        ("csv", "path1,path2,issame,fold\na.png,b.png,1,0\na.png,b.png,1\n",
         r"pairs.csv, line 3: expected 4 fields like the first row, got 3"),
        ("csv", "path1,path2,issame,fold\na.png,b.png,1,first\n", r"pairs.csv, line 2: fold must be an integer >= 0"),
        ("csv", "path1,path2,same\na.png,b.png,1\n", r"pairs.csv, line 1: header must be 'path1,path2,issame"),
        ("csv", "a.png,b.png\n", r"pairs.csv, line 1: expected 'path1,path2,issame\[,fold\]'"),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path, layout, text, message):
    """One malformed line in an otherwise valid file of each published layout: a ValueError naming the file and the
    line number (blank lines count)."""
    if layout == "lfw":
        images = lfw_tree(tmp_path / "lfw")
        (tmp_path / "pairs.txt").write_text(text)
        read = lambda: read_lfw_pairs(tmp_path / "pairs.txt", images)  # noqa: E731
    elif layout.startswith("cfp"):
        root = cfp_tree(tmp_path / "cfp")
        target = "Pair_list_F.txt" if layout == "cfp_list" else "Split/FF/01/same.txt"
        (root / "Protocol" / target).write_text(text)
        read = lambda: read_cfp_pairs(root, "FF")  # noqa: E731
    else:
        write_image(tmp_path / "a.png", 1)
        write_image(tmp_path / "b.png", 2)
        (tmp_path / "pairs.csv").write_text(text)
        read = lambda: read_pairs_csv(tmp_path / "pairs.csv")  # noqa: E731
    with pytest.raises(ValueError, match=message):
        read()


class _WritesAFile:
    """Unpickling this calls open(path, "w"): what a crafted .bin could do with any callable."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_load_bin_reads_plain_bins_of_any_protocol(tmp_path, protocol):
    """Protocols 0-2 pickle bytes through _codecs.encode, the one global the restricted unpickler allows."""
    pixels = np.random.default_rng(protocol).integers(0, 256, size=(2, 3, 4, 3), dtype=np.uint8)
    path = tmp_path / "toy.bin"
    path.write_bytes(pickle.dumps(([encoded_png(image) for image in pixels], [1]), protocol=protocol))
    images, issame = load_bin(path)
    np.testing.assert_array_equal(images, pixels)
    np.testing.assert_array_equal(issame, [True])


@pytest.mark.parametrize("payload, message", [
    ("code", r"crafted.bin is not an insightface .bin pickle: refused to load (io|builtins).open: a .bin holds only "
             r"lists of bytes and bools$"),
    ("array", r"crafted.bin is not an insightface .bin pickle: refused to load numpy\..*"),
    ("float flags", r"crafted.bin: issame must be a flat list of booleans$"),
])
def test_load_bin_refuses_to_build_objects_from_a_crafted_file(tmp_path, payload, message):
    """Issue 19 item 11: a .bin whose pickle calls open() created the file on load; now nothing outside lists,
    bytes and bools is built, and the refusal is one line."""
    marker = tmp_path / "pwned"
    image = encoded_png(np.zeros((2, 2, 3), np.uint8))
    content = {
        "code": ([image, image], [_WritesAFile(marker)]),
        "array": ([np.frombuffer(image, np.uint8), image], [True]),
        "float flags": ([image, image], [0.5]),
    }[payload]
    path = tmp_path / "crafted.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(ValueError, match=message) as caught:
        load_bin(path)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_lfw_names_outside_the_image_folder_are_refused(tmp_path):
    """Issue 19 item 13: a pairs.txt name '../secret' read images beside the benchmark folder."""
    images = lfw_tree(tmp_path / "lfw")
    write_image(tmp_path / "secret" / "secret_0001.jpg", seed=9)
    write_image(tmp_path / "secret" / "secret_0002.jpg", seed=9)
    pairs_path = tmp_path / "pairs.txt"
    for name in ("../secret", "..", "Alice/../../secret", "/tmp/x"):
        pairs_path.write_text(f"Alice 1 2\nAlice 1 {name} 1\n")
        with pytest.raises(ValueError, match=rf"pairs.txt, line 2: name '{name}' is not a folder name under "):
            read_lfw_pairs(pairs_path, images)
    pairs_path.write_text("../secret 1 2\n")
    with pytest.raises(ValueError, match=r"line 1: name '../secret' is not a folder name"):
        read_lfw_pairs(pairs_path, images, check_files=False)


@pytest.mark.parametrize("opcode, size_bytes, length", [
    (b"\x8e", 8, 2 ** 40),  # BINBYTES8 (protocol 4): a 1 TiB string in a 21-byte file
    (b"\x8d", 8, 2 ** 62),  # BINUNICODE8
    (b"B", 4, 2 ** 31),  # BINBYTES (protocol 3): 2 GiB
    (b"\x95", 8, 2 ** 30),  # FRAME (protocol 4): a 1 GiB frame
])
def test_load_bin_bounds_every_declared_length_by_the_file_size(tmp_path, opcode, size_bytes, length):
    """Issue 28 item 5: a .bin declaring a 2^40-byte string was a MemoryError traceback (a 2^31 one allocated 2 GB);
    each length the pickle declares is checked against the bytes after it (file: header, opcode, length)."""
    import tracemalloc

    path = tmp_path / "liar.bin"
    path.write_bytes(b"\x80\x04" + opcode + length.to_bytes(size_bytes, "little") + b"x" * (18 - size_bytes))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"liar.bin is not an insightface .bin pickle: ") as caught:
            load_bin(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(caught.value) and peak < 1 << 20


def test_pairs_csv_edges_a_hostile_file_finds(tmp_path, capsys):
    """Issue 28 item 7: a fold of 10^30 was an OverflowError traceback; Excel's BOM made the header a bad issame;
    a file listing every pair twice passed without a word."""
    write_image(tmp_path / "a.png", 1)
    write_image(tmp_path / "b.png", 2)
    write_image(tmp_path / "c.png", 3)
    csv_path = tmp_path / "pairs.csv"
    for fold in ("1" + "0" * 30, "10000", "١", "9" * 5000):  # the third: an Arabic-Indic one, a digit to isdigit()
        csv_path.write_text(f"path1,path2,issame,fold\na.png,b.png,1,0\na.png,c.png,0,{fold}\n")
        with pytest.raises(ValueError) as raised:
            read_pairs_csv(csv_path)
        assert str(raised.value).startswith(f"{csv_path}, line 3: fold must be an integer >= 0 and < 10000, got '")
        assert len(str(raised.value)) < 300
    csv_path.write_bytes("path1,path2,issame,fold\r\na.png,b.png,1,0\r\na.png,c.png,0,1\r\n".encode("utf-8-sig"))
    pairs = read_pairs_csv(csv_path)
    assert list(pairs.issame) == [True, False] and list(pairs.folds) == [0, 1]
    assert capsys.readouterr().err == ""
    csv_path.write_text("a.png,b.png,1\na.png,c.png,0\nb.png,a.png,1\na.png,c.png,0\n")
    pairs = read_pairs_csv(csv_path)
    assert len(pairs.issame) == 4
    assert capsys.readouterr().err == (f"warning: {csv_path}: 2 pair(s) listed more than once (first: line 3 "
                                       "repeats line 1); each copy counts\n")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG (spec: signature, IHDR chunk = length, type, 13 bytes of data, CRC-32 of type + data; then IDAT, IEND)
    whose header declares width x height 8-bit greyscale pixels; its one IDAT holds a single deflated row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


def test_an_image_declaring_20000_by_20000_pixels_is_one_line_in_every_reader(tmp_path):
    """Issue 28 item 8: PIL's DecompressionBombError was a traceback wherever an image was read but in tools.align;
    every reader opens images through tfface.data.image_io.open_image, which refuses it in one line."""
    from PIL import Image

    from tfface.data.image_io import read_rgb
    from tfface.data.schema import make_example

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(20000, 20000))
    with pytest.raises(Image.DecompressionBombError):  # the file is what it claims for PIL: the fault is real
        Image.open(bomb)
    (tmp_path / "set.bin").write_bytes(pickle.dumps(([bomb.read_bytes(), bomb.read_bytes()], [True]), protocol=4))
    for read, name in ((lambda: load_images([str(bomb)]), str(bomb)), (lambda: read_rgb(bomb), str(bomb)),
                       (lambda: load_bin(tmp_path / "set.bin"), f"{tmp_path / 'set.bin'}, image 0"),
                       (lambda: make_example(bomb.read_bytes(), 0, image_format="png"), "image bytes are not a readable image")):
        with pytest.raises(ValueError) as raised:
            read()
        assert re.search(rf"{re.escape(name)}: too large: Image size \(400000000 pixels\) exceeds limit",
                         str(raised.value)) and "\n" not in str(raised.value), str(raised.value)
    small = tmp_path / "small.png"
    small.write_bytes(png_declaring(300, 200))
    assert load_images([str(small)]).shape == (1, 200, 300, 3)
