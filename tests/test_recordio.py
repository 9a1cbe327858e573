"""insightface RecordIO folders (tfface.data.recordio) against folders written here from the format's specification.

The writer below follows dmlc-core's RecordIOWriter::WriteRecord and MXNet's recordio.pack, independently of the
reader: each part is `magic 0xced7230a (uint32 LE) | lrecord = cflag << 29 | length (uint32 LE) | bytes | zero
padding to 4`, a payload that holds the magic at a 4-byte aligned position is cut there into parts (cflag 1 first,
2 middle, 3 last; the magic itself is dropped); a payload is IRHeader `<IfQQ` (flag, label, id, id2), then `flag`
float32 labels when flag > 0, then the image bytes; `.idx` lines are "key\\toffset"; `property` is
"classes,height,width".
"""
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfface.data import recordio
from tfface.data.pipeline import denormalize_images, make_dataset

MAGIC_BYTES = struct.pack("<I", 0xCED7230A)


def frame(payload: bytes) -> bytes:
    """dmlc RecordIO framing of one record, split at aligned occurrences of the magic."""
    out, start = b"", 0
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == MAGIC_BYTES]
    for cut in cuts:
        out += MAGIC_BYTES + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (cut - start)) + payload[start:cut]
        start = cut + 4
    last = payload[start:]
    out += MAGIC_BYTES + struct.pack("<I", ((3 if cuts else 0) << 29) | len(last)) + last
    return out + b"\0" * (-len(last) % 4)


def pack(label, image: bytes, record_id: int = 0) -> bytes:
    """MXNet recordio.pack: a scalar label (flag 0) or a label vector (flag = its length)."""
    if np.ndim(label) == 0:
        return struct.pack("<IfQQ", 0, float(label), record_id, 0) + image
    labels = np.asarray(label, np.float32)
    return struct.pack("<IfQQ", len(labels), 0.0, record_id, 0) + labels.tobytes() + image


def write_folder(root: Path, records: dict, num_classes: int, size=(12, 12)) -> Path:
    """records: {key: payload} written in key order with their .idx, and `property`."""
    root.mkdir(parents=True, exist_ok=True)
    data, lines = b"", []
    for key in sorted(records):
        lines.append(f"{key}\t{len(data)}\n")
        data += frame(records[key])
    (root / "train.rec").write_bytes(data)
    (root / "train.idx").write_text("".join(lines))
    (root / "property").write_text(f"{num_classes},{size[0]},{size[1]}")
    return root


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def faces(count: int, seed: int, size=(12, 12)) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(count)]


def with_magic_inside(jpeg: bytes) -> bytes:
    """The JPEG with a comment segment right after SOI holding the magic at payload offset 32 (aligned): the writer
    then splits this record into parts. 24 (IRHeader) + 2 (SOI) + 4 (COM marker, length) + 2 = 32."""
    comment = b"ab" + MAGIC_BYTES + b"cd"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def test_frame_splits_at_the_aligned_magic():
    payload = pack(1, with_magic_inside(encode(faces(1, 0)[0], "JPEG")))
    assert payload[32:36] == MAGIC_BYTES
    framed = frame(payload)
    assert struct.unpack_from("<I", framed, 4)[0] >> 29 == 1 and struct.unpack_from("<I", framed, 4)[0] & 0xFFFF == 32
    assert len(framed) % 4 == 0


@pytest.mark.parametrize("span_bytes", [16 << 20, 700])  # one span; a span every ~2 records
def test_scalar_labels_every_image_and_label_as_written(tmp_path, monkeypatch, span_bytes):
    monkeypatch.setattr(recordio, "CHUNK_BYTES", span_bytes)
    pixels = faces(7, seed=1)
    images = [encode(image, "PNG") for image in pixels]
    labels = [3, 0, 2, 2, 1, 0, 3]
    root = write_folder(tmp_path / "d", {key: pack(label, image, key) for key, (label, image) in
                                         enumerate(zip(labels, images))}, num_classes=4)
    folder = recordio.InsightfaceFolder(root)
    assert len(folder) == 7 and folder.num_classes == 4 and folder.image_size == (12, 12)
    assert recordio.scan(root).bad == []
    batches = list(make_dataset(root, batch_size=3, training=False, flip=False))
    got_images = np.concatenate([denormalize_images(batch["image"]).numpy() for batch in batches])
    got_labels = np.concatenate([batch["label"].numpy() for batch in batches])
    np.testing.assert_array_equal(got_images, np.stack(pixels))  # PNG: lossless, exact
    assert got_labels.tolist() == labels


@pytest.mark.parametrize("span_bytes", [16 << 20, 900])
def test_record_zero_header_vector_labels_and_parts(tmp_path, monkeypatch, span_bytes):
    """As faces_emore: record 0 = header (flag 2, labels (first identity record, end)), images 1..N, then identity
    records; vector labels (flag 2) take the first value; one image record is written in parts."""
    monkeypatch.setattr(recordio, "CHUNK_BYTES", span_bytes)
    jpegs = [encode(image, "JPEG") for image in faces(5, seed=2)]
    jpegs[2] = with_magic_inside(jpegs[2])
    labels = [0, 0, 1, 1, 2]
    records = {0: pack([6.0, 9.0], b"")}
    for key, (label, jpeg) in enumerate(zip(labels, jpegs), 1):
        records[key] = pack([label, 7.0], jpeg, key) if key % 2 else pack(label, jpeg, key)
    for identity, key in enumerate(range(6, 9)):  # identity records: (start, end) of its images; not images
        records[key] = pack([1.0 + 2 * identity, 3.0 + 2 * identity], b"")
    root = write_folder(tmp_path / "d", records, num_classes=3)
    folder = recordio.InsightfaceFolder(root)
    assert folder.keys.tolist() == [1, 2, 3, 4, 5]
    assert recordio.scan(root).bad == []
    examples = list(recordio.encoded_examples(folder, training=False, seed=None))
    assert [example["encoded"].numpy() for example in examples] == jpegs  # the bytes as written, parts joined
    assert [int(example["label"]) for example in examples] == labels
    decoded = list(make_dataset(root, batch_size=5, training=False, flip=False))[0]
    assert decoded["image"].shape == (5, 12, 12, 3)


def test_training_order_is_a_permutation_per_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(recordio, "CHUNK_BYTES", 600)
    records = {key: pack(key % 2, encode(image, "PNG")) for key, image in enumerate(faces(6, seed=3))}
    folder = recordio.InsightfaceFolder(write_folder(tmp_path / "d", records, num_classes=2))
    dataset = recordio.encoded_examples(folder, training=True, seed=5).repeat(2)
    seen = [example["encoded"].numpy() for example in dataset]
    first, second = seen[:6], seen[6:]
    assert sorted(first) == sorted(second) == sorted(records[key][24:] for key in records)


def bad_folders(root: Path):
    """(name, folder, key of the bad record, words of its one line) for each bad-record case."""
    good = [pack(key % 2, encode(image, "JPEG"), key) for key, image in enumerate(faces(4, seed=4))]
    cases = []
    wrong_magic = write_folder(root / "magic", dict(enumerate(good)), num_classes=2)
    data = bytearray(wrong_magic.joinpath("train.rec").read_bytes())
    second = len(frame(good[0]))
    data[second:second + 4] = b"\x00\x11\x22\x33"
    wrong_magic.joinpath("train.rec").write_bytes(bytes(data))
    cases.append(("wrong magic", wrong_magic, 1, "wrong magic 0x33221100"))
    truncated = write_folder(root / "truncated", dict(enumerate(good)), num_classes=2)
    data = truncated.joinpath("train.rec").read_bytes()
    truncated.joinpath("train.rec").write_bytes(data[:-30])
    cases.append(("truncated", truncated, 3, "truncated"))
    past_end = write_folder(root / "past_end", dict(enumerate(good)), num_classes=2)
    size = past_end.joinpath("train.rec").stat().st_size
    lines = past_end.joinpath("train.idx").read_text().splitlines()
    lines[2] = f"2\t{size + 400}"
    past_end.joinpath("train.idx").write_text("\n".join(lines) + "\n")
    cases.append(("idx past the end", past_end, 2, "past the end"))
    label = write_folder(root / "label", {**dict(enumerate(good)), 2: pack(5, encode(faces(1, 9)[0], "JPEG"))},
                         num_classes=2)
    cases.append(("label outside", label, 2, "label 5 outside the 2 classes of property"))
    return cases


def test_bad_records_are_one_line_naming_file_and_record(tmp_path):
    for name, root, key, words in bad_folders(tmp_path):
        result = recordio.scan(root)
        assert len(result.bad) == 1, name
        line = result.bad[0].line()
        assert line.startswith(f"{root / 'train.rec'} record {key}: ") and words in line and "\n" not in line, line
        assert result.good == 3
        # read without a scan: the pipeline is not built, the error naming file and record
        with pytest.raises(ValueError, match=f"train.rec record {key}: "):
            list(make_dataset(root, batch_size=4, training=False))
        kept = list(make_dataset(root, batch_size=4, training=False, skip=result, drop_remainder=False))[0]
        assert kept["image"].shape[0] == 3 and int(kept["skipped_records"].numpy().sum()) == 1


def test_malformed_index_and_property_name_the_file_and_line(tmp_path):
    root = write_folder(tmp_path / "d", {0: pack(0, encode(faces(1, 0)[0], "PNG"))}, num_classes=1)
    root.joinpath("train.idx").write_text("0\t0\nzero\tten\n")
    with pytest.raises(ValueError, match=r"train.idx line 2: expected 'KEY<TAB>OFFSET'"):
        recordio.InsightfaceFolder(root)
    root.joinpath("train.idx").write_text("0\t0\n")
    root.joinpath("property").write_text("many,112")
    with pytest.raises(ValueError, match=r"property: expected 'NUM_CLASSES,HEIGHT,WIDTH'"):
        recordio.InsightfaceFolder(root)


def write_bin(path: Path, images: list, issame: list) -> Path:
    """An insightface .bin: a pickle of (list of 2P encoded images, list of P bools)."""
    path.write_bytes(pickle.dumps(([encode(image, "PNG") for image in images], issame), protocol=4))
    return path


def pattern(label: int, rng) -> np.ndarray:
    """20x20 noise with a bright square at the identity's own place (tests/test_train_cli.py's tiny faces)."""
    image = rng.integers(0, 60, size=(20, 20, 3)).astype(np.uint8)
    row, col = divmod(label, 2)
    image[2 + 9 * row:8 + 9 * row, 2 + 9 * col:8 + 9 * col] = 230
    return image


@pytest.fixture(scope="module")
def emore(tmp_path_factory) -> Path:
    """A faces_emore-like folder: record 0 header, 4 identities x 12 JPEG faces, identity records, and lfw.bin
    (10 folds of one same and one different pair of fresh faces, as insightface reads a .bin: contiguous folds)."""
    root = tmp_path_factory.mktemp("faces_emore")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    records = {0: pack([49.0, 53.0], b"")}
    for key, label in enumerate(labels, 1):
        records[key] = pack(label, encode(pattern(int(label), rng), "JPEG"), key)
    for identity in range(4):
        records[49 + identity] = pack([1.0 + 12 * identity, 13.0 + 12 * identity], b"")
    write_folder(root, records, num_classes=4, size=(20, 20))
    images, issame = [], []
    for first in range(10):
        images += [pattern(first % 4, rng), pattern(first % 4, rng), pattern(first % 4, rng),
                   pattern((first + 1) % 4, rng)]
        issame += [True, False]
    write_bin(root / "lfw.bin", images, issame)
    return root


def emore_config(tmp_path: Path, root: Path, *evaluation: str) -> list:
    text = (
        "backbone: {name: tiny, options: {embedding_size: 8}}\n"
        "head: {name: softmax}\n"
        f"data: {{train: {root}, crop_size: [16, 16], shuffle_buffer: 64}}\n"
        "train: {epochs: 3, batch_size: 8, verbose: 2}\n"
        "schedule: {name: constant, learning_rate: 0.05}\n"
        f"work_dir: {tmp_path / 'run'}\n"
    )
    (tmp_path / "config.yaml").write_text(text)
    sets = [f"evaluation.benchmarks=[lfw={root / 'lfw.bin'}]", "evaluation.image_size=[16, 16]", *evaluation]
    return ["--config", str(tmp_path / "config.yaml"), *[item for override in sets for item in ("--set", override)]]


def test_trains_from_recordio_with_bin_verification_and_keeps_the_best(tmp_path, emore, capsys):
    import csv
    import json

    from tfface import runs
    from tfface.evaluation.benchmarks import parse_benchmark
    from tfface.training.verification_callback import load_benchmark, verify_loaded
    from trainers.train import main

    assert main(emore_config(tmp_path, emore, "evaluation.keep_best=lfw")) == 0
    assert "on 48 images of 4 identities" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    accuracies = [float(row["lfw_accuracy"]) for row in rows]
    assert len(accuracies) == 3 and all(0.0 <= value <= 1.0 for value in accuracies)
    assert all(0.0 <= float(row["lfw_auc"]) <= 1.0 for row in rows)
    best_dir = tmp_path / "run" / "best"
    best = json.loads((best_dir / "best.json").read_text())
    assert best["benchmark"] == "lfw" and best["accuracy"] == pytest.approx(max(accuracies))
    assert best["epoch"] == 1 + accuracies.index(max(accuracies))
    # the kept backbone gives the recorded accuracy again
    backbone = runs.build_backbone(runs.read_run(best_dir), best_dir / "backbone.weights.h5")
    loaded = load_benchmark(parse_benchmark(f"lfw={emore / 'lfw.bin'}"), (16, 16))
    assert float(verify_loaded(backbone, loaded)["accuracy_mean"]) == pytest.approx(best["accuracy"])


def test_verification_every_n_steps(tmp_path, emore, capsys):
    from trainers.train import main

    assert main(emore_config(tmp_path, emore, "evaluation.every_steps=4", "train.epochs=2")) == 0
    out = capsys.readouterr().out
    steps = [int(line.split()[3]) for line in out.splitlines() if line.startswith("verification at step")]
    assert steps == [4, 8, 12]  # 2 epochs x 6 steps
    events = list((tmp_path / "run" / "logs" / "verification").glob("events.out.tfevents.*"))
    assert len(events) == 1


def test_bad_evaluation_settings_are_one_line(tmp_path, emore, capsys):
    from trainers.train import main

    assert main(emore_config(tmp_path, emore, "evaluation.keep_best=agedb_30")) == 2
    assert "error: evaluation.keep_best: no benchmark named 'agedb_30' (benchmarks: lfw)" in capsys.readouterr().err
    assert main(emore_config(tmp_path, emore, f"evaluation.benchmarks=[cfp_fp={tmp_path / 'none.bin'}]")) == 2
    assert f"error: benchmark cfp_fp: not found: {tmp_path / 'none.bin'}" in capsys.readouterr().err


def test_bad_record_stops_training_in_one_line_or_is_skipped(tmp_path, capsys):
    import csv

    from tools.make_tfrecords import main as make_tfrecords
    from trainers.train import main

    root = dict((name, folder) for name, folder, _, _ in bad_folders(tmp_path / "bad"))["wrong magic"]
    assert make_tfrecords(["describe", str(root), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "examples: 4 image records; classes: 2" in out
    assert f"  bad: {root / 'train.rec'} record 1: wrong magic 0x33221100" in out
    config = tmp_path / "config.yaml"
    config.write_text(
        "backbone: {name: tiny, options: {embedding_size: 8}}\nhead: {name: softmax}\n"
        f"data: {{train: {root}, image_size: [16, 16]}}\ntrain: {{epochs: 1, batch_size: 3, verbose: 2, strategy: default}}\n"
        f"schedule: {{name: constant, learning_rate: 0.05}}\nwork_dir: {tmp_path / 'run'}\n"
    )
    assert main(["--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: data.train: {root / 'train.rec'} record 1: wrong magic") and "\n" not in error
    assert main(["--config", str(config), "--set", "data.on_bad_record=skip"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))  # one step of 3: the whole pass
    assert float(rows[0]["skipped_records"]) == 1


def test_bench_recordio_prints_both_sources(capsys):
    from benchmarks import bench_recordio

    assert bench_recordio.main(["--faces", "40", "--batch", "8", "--batches", "1", "--shards", "2",
                                "--train-images-per-second", "10"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" (")[0] for row in rows[1:]] == ["| TFRecord", "| RecordIO", "| recordio.scan"]
    assert float(rows[1].split("|")[3]) == 1.0 and float(rows[2].split("|")[2]) > 0
