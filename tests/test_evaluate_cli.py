"""tools.evaluate end to end: tiny SavedModels (a tfface export and a foreign Keras model) on tiny benchmark files of
each published layout, the report's numbers against `evaluate_pairs` on embeddings computed here from the Keras
models, the flip modes and PCA, the report files, and one-line errors."""
import io
import json
import pickle
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving.server import ModelServer
from tfface import backbones
from tfface.evaluation import evaluate_pairs
from tfface.export import METADATA_FILE, export_backbone
from tools.evaluate import BenchmarkPairs, embed_distinct_images, main, parse_benchmark

TFFACE_INPUT = (16, 16)
FOREIGN_INPUT = (12, 10)  # not square, so a height/width mix-up shows
IDENTITIES = ("Ann_A", "Bob_B", "Cid_C", "Dee_D")
FARS = ("1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01")


def face(identity: int, shot: int) -> np.ndarray:
    """uint8 [H, W, 3]: an identity's pattern plus per-shot noise; every other shot is 24x18 instead of 20x20, so
    the CLI has to resize."""
    base = np.random.default_rng(identity).integers(0, 256, size=(20, 20, 3))
    noise = np.random.default_rng(100 + 10 * identity + shot).integers(-40, 41, size=(20, 20, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    if shot % 2:
        pixels = np.asarray(Image.fromarray(pixels).resize((18, 24), Image.NEAREST))
    return pixels


def save_png(path: Path, pixels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def alternating_pairs(count: int):
    """(identity1, shot1, identity2, shot2) x count, genuine and impostor alternating (every 2 contiguous pairs
    hold one of each, so 10 contiguous folds of 20 pairs all have both)."""
    pairs = []
    for index in range(count):
        identity = index // 2 % len(IDENTITIES)
        if index % 2 == 0:
            pairs.append((identity, index % 3, identity, (index + 1) % 3))
        else:
            pairs.append((identity, index % 3, (identity + 1) % len(IDENTITIES), (index + 2) % 3))
    return pairs


def lfw_benchmark(root: Path):
    """LFW layout: NAME/NAME_000k.png and a pairs.txt of 2 folds x (3 matched + 3 mismatched) lines."""
    paths = {(i, shot): save_png(root / name / f"{name}_{shot + 1:04d}.png", face(i, shot))
             for i, name in enumerate(IDENTITIES) for shot in range(3)}
    lines, pairs, issame = ["2\t3"], [], []
    for fold in range(2):
        for i in range(3):
            identity = (i + fold) % 4
            lines.append(f"{IDENTITIES[identity]}\t{fold + 1}\t3")
            pairs.append((paths[identity, fold], paths[identity, 2]))
            issame.append(True)
        for i in range(3):
            first, second = (i + fold) % 4, (i + fold + 1) % 4
            lines.append(f"{IDENTITIES[first]}\t1\t{IDENTITIES[second]}\t{i + 1}")
            pairs.append((paths[first, 0], paths[second, i]))
            issame.append(False)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return str(root), {"pairs": pairs, "issame": issame, "folds": np.repeat([0, 1], 6), "images": 11}


def bin_benchmark(path: Path):
    """insightface .bin of 20 alternating pairs; the same shot appears in several pairs (counted once)."""
    sources = [(face(a, s), face(b, t)) for a, s, b, t in alternating_pairs(20)]
    encoded = [png_bytes(pixels) for pair in sources for pixels in pair]
    issame = [index % 2 == 0 for index in range(20)]
    path.write_bytes(pickle.dumps((encoded, issame), protocol=4))
    distinct = {(a, s) for a, s, _, _ in alternating_pairs(20)} | {(b, t) for _, _, b, t in alternating_pairs(20)}
    return str(path), {"pairs": sources, "issame": issame, "folds": None, "images": len(distinct)}


def cfp_benchmark(root: Path):
    """CFP layout: Data/Images/00k/frontal|profile/0j.png, Protocol/Pair_list_F|P.txt, Split/FF|FP/01..02, each fold
    2 same + 2 diff pairs. Returns {protocol: (--benchmark value, expected)}."""
    frontal, profile = {}, {}
    lines_f, lines_p = [], []
    for identity in range(4):
        for shot in range(2):
            image_id = 2 * identity + shot + 1
            frontal[image_id] = save_png(root / f"Data/Images/{identity + 1:03d}/frontal/{shot + 1:02d}.png",
                                         face(identity, shot))
            profile[image_id] = save_png(root / f"Data/Images/{identity + 1:03d}/profile/{shot + 1:02d}.png",
                                         face(identity, shot + 2)[:, ::-1])
            lines_f.append(f"{image_id} ../Data/Images/{identity + 1:03d}/frontal/{shot + 1:02d}.png")
            lines_p.append(f"{image_id} ../Data/Images/{identity + 1:03d}/profile/{shot + 1:02d}.png")
    (root / "Protocol").mkdir(parents=True)
    (root / "Protocol/Pair_list_F.txt").write_text("\n".join(lines_f) + "\n")
    (root / "Protocol/Pair_list_P.txt").write_text("\n".join(lines_p) + "\n")
    folds = {1: ([(1, 2), (3, 4)], [(1, 3), (5, 8)]), 2: ([(5, 6), (7, 8)], [(2, 7), (6, 1)])}
    protocols = {}
    for protocol, second_images in (("FF", frontal), ("FP", profile)):
        pairs = []
        for fold, (same, diff) in folds.items():
            fold_dir = root / "Protocol/Split" / protocol / f"{fold:02d}"
            fold_dir.mkdir(parents=True)
            (fold_dir / "same.txt").write_text("".join(f"{i},{j}\n" for i, j in same))
            (fold_dir / "diff.txt").write_text("".join(f"{i},{j}\n" for i, j in diff))
            pairs += [(frontal[i], second_images[j]) for i, j in same + diff]
        expected = {"pairs": pairs, "issame": [True, True, False, False] * 2, "folds": np.repeat([0, 1], 4),
                    "images": len({path for pair in pairs for path in pair})}
        protocols[protocol] = (f"{root}:{protocol}", expected)
    return protocols


def csv_benchmark(root: Path):
    """A pairs CSV with a header and relative paths into the LFW tree: 20 alternating pairs, no fold column."""
    rows, pairs = ["path1,path2,issame"], []
    for a, s, b, t in alternating_pairs(20):
        first = f"lfw/{IDENTITIES[a]}/{IDENTITIES[a]}_{s + 1:04d}.png"
        second = f"lfw/{IDENTITIES[b]}/{IDENTITIES[b]}_{t + 1:04d}.png"
        rows.append(f"{first},{second},{int(a == b)}")
        pairs.append((str(root / first), str(root / second)))
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    issame = [index % 2 == 0 for index in range(20)]
    images = len({path for pair in pairs for path in pair})
    return str(root / "pairs.csv"), {"pairs": pairs, "issame": issame, "folds": None, "images": images}


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    """{name: (--benchmark value, expected {"pairs": [(source1, source2)], "issame", "folds", "images"})}; a source
    is an image path or uint8 pixels."""
    root = tmp_path_factory.mktemp("benchmarks")
    cfp = cfp_benchmark(root / "cfp")
    return {
        "lfw": lfw_benchmark(root / "lfw"),
        "agedb": bin_benchmark(root / "agedb.bin"),
        "cfp_fp": cfp["FP"],
        "cfp_ff": cfp["FF"],
        "mine": csv_benchmark(root),
    }


@pytest.fixture(scope="module")
def tfface_model(tmp_path_factory):
    """A `tiny` backbone with random weights exported by tfface.export at models/tiny/1; returns (path, backbone)."""
    backbone = backbones.get_backbone("tiny", input_shape=(*TFFACE_INPUT, 3), embedding_size=8, width=4)
    rng = np.random.default_rng(0)
    for variable in backbone.variables:
        values = rng.uniform(0.5, 2.0, variable.shape) if "variance" in variable.path else rng.normal(
            0.0, 0.5, variable.shape)
        variable.assign(values.astype("float32"))
    path = tmp_path_factory.mktemp("models") / "tiny" / "1"
    export_backbone(backbone, path, {"backbone": "tiny", "input_shape": [*TFFACE_INPUT, 3], "embedding_size": 8})
    return path, backbone


def foreign_keras_model(input_size, seed: int = 1) -> keras.Model:
    """A small conv net on float pixels 0..255 giving unnormalised 6-d embeddings."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*input_size, 3))
    x = keras.layers.Rescaling(1 / 255.0, offset=-0.5)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6)(x))


def export_foreign(model: keras.Model, path: Path, dtype=tf.uint8) -> None:
    """`model` as a SavedModel whose serving_default takes `pixels` [N, H, W, 3] and returns `feat` (not the
    names tfface.export uses), with no tfface metadata."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda pixels: {"feat": model(keras.ops.cast(pixels, "float32"))},
        [tf.TensorSpec((None, *model.input_shape[1:]), dtype, name="pixels")],
    )
    archive.write_out(str(path), verbose=False)


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory):
    """A foreign SavedModel under the model base path models/foreign (version 3); returns (base path, model)."""
    model = foreign_keras_model(FOREIGN_INPUT)
    base = tmp_path_factory.mktemp("models") / "foreign"
    export_foreign(model, base / "3")
    return base, model


def pixels_at(source, size) -> np.ndarray:
    """uint8 [H, W, 3] of an image path or pixels, resized bilinearly to size (H, W) with PIL."""
    image = Image.open(source).convert("RGB") if isinstance(source, str) else Image.fromarray(source)
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR))


def tfface_embed(backbone, images: np.ndarray) -> np.ndarray:
    """What tfface's serving_default computes, by hand: (pixel - 127.5) / 128, the backbone, unit rows."""
    normalized = ((images.astype(np.float64) - 127.5) / 128.0).astype(np.float32)
    raw = backbone(normalized, training=False)["embedding"].numpy().astype(np.float64)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def foreign_embed(model, images: np.ndarray) -> np.ndarray:
    return model(images.astype(np.float32)).numpy().astype(np.float64)


def expected_numbers(embed, expected, size, flip="sum", pca=0):
    """evaluate_pairs on each pair's two images embedded one by one here (no deduplication), flip-fused by hand."""
    def features(images):
        plain = embed(images)
        if flip == "none":
            return plain
        mirrored = embed(images[:, :, ::-1])
        if flip == "sum":
            fused = plain + mirrored
        else:
            fused = np.concatenate([plain, mirrored], axis=1)
        return fused / np.linalg.norm(fused, axis=1, keepdims=True)

    first = features(np.stack([pixels_at(a, size) for a, _ in expected["pairs"]]))
    second = features(np.stack([pixels_at(b, size) for _, b in expected["pairs"]]))
    return evaluate_pairs(first, second, np.array(expected["issame"]), folds=expected["folds"],
                          pca_components=pca)


def assert_entry_matches(entry, numbers, expected):
    for key in ("accuracy_mean", "accuracy_std", "auc", "eer", "best_threshold", "val", "far"):
        assert entry[key] == pytest.approx(numbers[key], abs=1e-6), key
    np.testing.assert_allclose(entry["fold_accuracies"], numbers["fold_accuracies"], atol=1e-6)
    assert list(entry["tar_at_far"]) == list(FARS)
    np.testing.assert_allclose([entry["tar_at_far"][far] for far in FARS], list(numbers["tar_at_far"].values()),
                               atol=1e-6)
    assert entry["pairs"] == len(expected["issame"])
    assert entry["images"] == expected["images"]
    assert entry["seconds"] > 0


def run_main(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_benchmark_kind_matches_evaluate_pairs_and_writes_the_report(tmp_path, benchmarks, tfface_model,
                                                                          capsys):
    model_path, backbone = tfface_model
    argv = ["--model", model_path, "--out", tmp_path / "report", "--batch-size", 5]
    for name, (value, _) in benchmarks.items():
        argv += ["--benchmark", f"{name}={value}"]
    code, out, _ = run_main(argv, capsys)
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert list(report["benchmarks"]) == list(benchmarks)
    kinds = {"lfw": "lfw", "agedb": "bin", "cfp_fp": "cfp:FP", "cfp_ff": "cfp:FF", "mine": "csv"}
    for name, (_, expected) in benchmarks.items():
        entry = report["benchmarks"][name]
        assert entry["kind"] == kinds[name]
        assert_entry_matches(entry, expected_numbers(lambda x: tfface_embed(backbone, x), expected, TFFACE_INPUT),
                             expected)
        assert f"{name}: accuracy {100 * entry['accuracy_mean']:.2f}" in out

    assert report["command"].startswith(f"python -m tools.evaluate --model {model_path} --out ")
    assert report["settings"] == {"flip": "sum", "pca": 0, "folds": 10, "batch_size": 5, "val_far_target": 1e-3}
    assert report["model"]["source"] == str(model_path)
    assert report["model"]["input_size"] == list(TFFACE_INPUT)
    assert report["model"]["embedding_size"] == 8
    assert report["model"]["metadata"] == json.loads((model_path / METADATA_FILE).read_text())
    written = sorted(path.name for path in (tmp_path / "report").iterdir())
    plots = sorted(f"roc_{name}.png" for name in benchmarks)
    assert written == sorted(["report.json", "report.md", *plots])  # no temporary files left
    for name in benchmarks:
        assert report["benchmarks"][name]["roc_plot"] == f"roc_{name}.png"
        with Image.open(tmp_path / "report" / f"roc_{name}.png") as plot:
            assert plot.format == "PNG" and plot.size == (550, 450)
    markdown = (tmp_path / "report" / "report.md").read_text()
    lfw = report["benchmarks"]["lfw"]
    assert (f"| lfw | lfw | 12 | 11 | {100 * lfw['accuracy_mean']:.2f} ± {100 * lfw['accuracy_std']:.2f} | "
            f"{lfw['auc']:.4f} |") in markdown
    assert "![ROC agedb](roc_agedb.png)" in markdown


@pytest.mark.parametrize("flip, pca", [("none", 0), ("sum", 0), ("concat", 0), ("concat", 4)])
def test_flip_modes_and_pca_on_a_foreign_model(tmp_path, benchmarks, foreign_model, capsys, flip, pca):
    base, model = foreign_model
    value, expected = benchmarks["mine"]
    code, _, _ = run_main(["--model", base, "--benchmark", f"mine={value}", "--flip", flip, "--pca", pca,
                           "--out", tmp_path], capsys)
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    numbers = expected_numbers(lambda x: foreign_embed(model, x), expected, FOREIGN_INPUT, flip=flip, pca=pca)
    assert_entry_matches(report["benchmarks"]["mine"], numbers, expected)
    assert report["model"] == {"source": str(base / "3"), "format": "savedmodel", "input_size": list(FOREIGN_INPUT),
                               "embedding_size": 6,
                               "signature": {"input": "pixels", "output": "feat"}}
    assert report["settings"]["flip"] == flip and report["settings"]["pca"] == pca


def test_the_issues_command_line_with_a_bare_flip_flag(tmp_path, benchmarks, tfface_model, capsys):
    """`--model M --benchmark lfw=DIR --benchmark cfp_fp=PATH.bin --flip --out R`: a bare --flip is the summed flip
    test, the same report as --flip sum."""
    model_path, _ = tfface_model
    common = ["--model", model_path, "--benchmark", f"lfw={benchmarks['lfw'][0]}",
              "--benchmark", f"cfp_fp={benchmarks['agedb'][0]}"]
    assert run_main(common + ["--flip", "--out", tmp_path / "bare"], capsys)[0] == 0
    assert run_main(common + ["--flip", "sum", "--out", tmp_path / "sum"], capsys)[0] == 0
    bare, summed = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("bare", "sum"))
    assert bare["settings"]["flip"] == "sum" and bare["command"].endswith("--flip --out " + str(tmp_path / "bare"))
    for name in ("lfw", "cfp_fp"):
        for key in ("accuracy_mean", "accuracy_std", "auc", "eer", "tar_at_far"):
            assert bare["benchmarks"][name][key] == summed["benchmarks"][name][key], (name, key)


@pytest.mark.parametrize("flip", ["none", "sum", "concat"])
def test_distinct_images_are_embedded_once_in_batches_and_flip_fused(flip):
    """Scores on tiny benchmarks tie too easily to tell flip modes apart, so the fused embeddings are checked here
    directly, with a linear embedding computed in numpy."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 4, 5, 3)).astype(np.uint8)
    projection = rng.normal(size=(4 * 5 * 3, 3))
    calls = []

    def embed(batch):
        calls.append(len(batch))
        return np.asarray(batch).reshape(len(batch), -1).astype(np.float64) @ projection

    pairs = BenchmarkPairs(images, np.arange(3), np.arange(3, 6), np.array([True, False, True]), None)
    fused = embed_distinct_images(embed, pairs, (4, 5), flip, batch_size=3, label="test")
    plain = images.reshape(7, -1) @ projection
    mirrored = images[:, :, ::-1].reshape(7, -1) @ projection
    expected = {"none": plain, "sum": plain + mirrored, "concat": np.concatenate([plain, mirrored], axis=1)}[flip]
    if flip != "none":
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(fused, expected, rtol=1e-10)
    assert calls == ([3, 3, 1] if flip == "none" else [3, 3, 3, 3, 1, 1])


def test_benchmark_kinds_are_recognised_from_the_value(benchmarks, tmp_path):
    assert parse_benchmark(f"a={benchmarks['lfw'][0]}").kind == "lfw"
    assert parse_benchmark(f"b={benchmarks['agedb'][0]}").kind == "bin"
    cfp_dir = benchmarks["cfp_fp"][0].rsplit(":", 1)[0]
    assert parse_benchmark(f"c={cfp_dir}") == parse_benchmark(f"c={cfp_dir}:FP")
    assert parse_benchmark(f"c={cfp_dir}").kind == "cfp:FP"
    assert parse_benchmark(f"c={cfp_dir}:ff").kind == "cfp:FF"
    assert parse_benchmark(f"d={benchmarks['mine'][0]}").kind == "csv"


@pytest.fixture(scope="module")
def float_input_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "float"
    export_foreign(foreign_keras_model(FOREIGN_INPUT), path, dtype=tf.float32)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_kind", "error: benchmark x: cannot tell the kind of {tmp}/notes.txt; expected a folder with "
                         "pairs.txt (LFW), a .bin file"),
        ("missing_file", "error: benchmark x: not found: {tmp}/nowhere.bin"),
        ("no_savedmodel", "error: --model: no SavedModel (saved_model.pb) in {tmp}/empty"),
        ("missing_model", "error: --model: not found: {tmp}/absent"),
        ("float_model", "error: --model {float}: 'serving_default' input 'pixels' must be uint8 [N, H, W, 3]"),
        ("protocol_not_cfp", "error: benchmark x: ':FF' is for CFP folders, but {lfw} has no Protocol/ folder"),
        ("bad_spec", "error: --benchmark must be NAME=PATH, got 'justapath'"),
        ("repeated", "error: --benchmark name(s) given more than once: x"),
        ("csv_missing_image", "error: benchmark x: {tmp}/bad.csv, line 2: image not found: {tmp}/gone.png"),
        ("bin_not_pickle", "error: benchmark x: {tmp}/junk.bin is not an insightface .bin pickle"),
        ("too_many_folds", "error: benchmark x: n_folds must be in [1, number of pairs = 20], got 30"),
        ("target_without_name", "error: --target needs --model_name"),
    ],
)
def test_bad_input_is_one_clear_error_line(tmp_path, benchmarks, tfface_model, float_input_model, capsys, case,
                                           message):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("path1,path2,issame\ngone.png,gone.png,1\n")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    model = ["--model", tfface_model[0]]
    lfw, csv = benchmarks["lfw"][0], benchmarks["mine"][0]
    argv = {
        "unknown_kind": model + ["--benchmark", f"x={tmp_path}/notes.txt"],
        "missing_file": model + ["--benchmark", f"x={tmp_path}/nowhere.bin"],
        "no_savedmodel": ["--model", tmp_path / "empty", "--benchmark", f"x={lfw}"],
        "missing_model": ["--model", tmp_path / "absent", "--benchmark", f"x={lfw}"],
        "float_model": ["--model", float_input_model, "--benchmark", f"x={lfw}"],
        "protocol_not_cfp": model + ["--benchmark", f"x={lfw}:FF"],
        "bad_spec": model + ["--benchmark", "justapath"],
        "repeated": model + ["--benchmark", f"x={lfw}", "--benchmark", f"x={csv}"],
        "csv_missing_image": model + ["--benchmark", f"x={tmp_path}/bad.csv"],
        "bin_not_pickle": model + ["--benchmark", f"x={tmp_path}/junk.bin"],
        "too_many_folds": model + ["--benchmark", f"x={csv}", "--folds", 30],
        "target_without_name": ["--target", "localhost:1", "--benchmark", f"x={lfw}"],
    }[case]
    code, _, err = run_main(argv + ["--out", tmp_path / "report"], capsys)
    expected = message.format(tmp=tmp_path, float=float_input_model, lfw=lfw)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(expected), err
    assert not (tmp_path / "report").exists()


def test_a_failed_rerun_leaves_no_earlier_report_behind(tmp_path, benchmarks, tfface_model, capsys):
    """Issue 19 item 12: a second run into the same --out that fails at its second benchmark left the first run's
    report.json, report.md and ROC plots looking complete; now they are gone (other files stay)."""
    out = tmp_path / "report"
    model = ["--model", tfface_model[0], "--out", out]
    lfw, agedb = benchmarks["lfw"][0], benchmarks["agedb"][0]
    assert run_main(model + ["--benchmark", f"lfw={lfw}", "--benchmark", f"agedb={agedb}"], capsys)[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["report.json", "report.md", "roc_agedb.png", "roc_lfw.png"]
    (out / "notes.txt").write_text("mine\n")
    broken = tmp_path / "broken.bin"
    broken.write_bytes(pickle.dumps(([b"not an image", b"neither"], [True]), protocol=4))
    code, _, err = run_main(model + ["--benchmark", f"lfw={lfw}", "--benchmark", f"broken={broken}"], capsys)
    assert code == 2 and err.splitlines()[-1].startswith(f"error: benchmark broken: cannot decode {broken}, image 0")
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_real_orl_faces_through_a_pixel_model(tmp_path, shared_data, capsys):
    """600 ORL pairs (10 folds) in a pairs CSV with absolute paths into ../shared/data, a SavedModel whose embedding
    is the 4x4-average-pooled pixels: grey 92x112 PNGs are read as RGB and resized to 46x56; pixel matching on ORL
    is well above chance, and the numbers equal evaluate_pairs on the pooling done in numpy."""
    rng = np.random.default_rng(0)
    orl = shared_data / "orl"
    rows, pairs, issame, folds = ["path1,path2,issame,fold"], [], [], []
    for fold in range(10):
        for _ in range(30):
            subject = rng.integers(1, 41)
            shots = rng.choice(10, 2, replace=False) + 1
            subjects = rng.choice(40, 2, replace=False) + 1
            for (first, second), same in (((f"s{subject}/{shots[0]}.png", f"s{subject}/{shots[1]}.png"), 1),
                                          ((f"s{subjects[0]}/{rng.integers(1, 11)}.png",
                                            f"s{subjects[1]}/{rng.integers(1, 11)}.png"), 0)):
                rows.append(f"{orl / first},{orl / second},{same},{fold}")
                pairs.append((str(orl / first), str(orl / second)))
                issame.append(bool(same))
                folds.append(fold)
    (tmp_path / "orl.csv").write_text("\n".join(rows) + "\n")
    size = (56, 46)
    inputs = keras.Input((*size, 3))
    pooled = keras.Model(inputs, keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(inputs)))
    export_foreign(pooled, tmp_path / "pixels")

    code, _, _ = run_main(["--model", tmp_path / "pixels", "--benchmark", f"orl={tmp_path / 'orl.csv'}",
                           "--flip", "none", "--out", tmp_path / "report"], capsys)
    assert code == 0
    entry = json.loads((tmp_path / "report" / "report.json").read_text())["benchmarks"]["orl"]

    def numpy_pooling(images):
        height, width = size[0] // 4, size[1] // 4
        blocks = images[:, : 4 * height, : 4 * width].astype(np.float64).reshape(len(images), height, 4, width, 4, 3)
        return blocks.mean(axis=(2, 4)).reshape(len(images), -1)

    expected = {"pairs": pairs, "issame": issame, "folds": np.array(folds),
                "images": len({path for pair in pairs for path in pair})}
    numbers = expected_numbers(numpy_pooling, expected, size, flip="none")
    assert_entry_matches(entry, numbers, expected)
    assert entry["accuracy_mean"] > 0.8 and entry["auc"] > 0.9


def test_serving_target_gives_the_savedmodel_numbers(tmp_path, benchmarks, tfface_model, capsys):
    """The same export served by serving.server over gRPC: --target reports what --model reports."""
    model_path, backbone = tfface_model
    specs = [arg for name in ("lfw", "agedb") for arg in ("--benchmark", f"{name}={benchmarks[name][0]}")]
    with ModelServer({"tiny": str(model_path.parent)}, port=0) as running:
        target = f"127.0.0.1:{running.port}"
        code, _, _ = run_main(["--target", target, "--model_name", "tiny", *specs, "--flip", "concat",
                               "--batch-size", 7, "--out", tmp_path / "served"], capsys)
        assert code == 0
        code, _, err = run_main(["--target", target, "--model_name", "nosuch", *specs, "--out", tmp_path / "x"],
                                capsys)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1
        assert len(errors) == 1 and errors[0].startswith(f"error: --target {target}: NOT_FOUND: "), err
    served = json.loads((tmp_path / "served" / "report.json").read_text())
    assert served["model"] == {"source": f"tiny at {target}", "input_size": list(TFFACE_INPUT), "embedding_size": 8,
                               "signature": {"input": "images", "output": "embedding"}}
    for name in ("lfw", "agedb"):
        expected = benchmarks[name][1]
        numbers = expected_numbers(lambda x: tfface_embed(backbone, x), expected, TFFACE_INPUT, flip="concat")
        assert_entry_matches(served["benchmarks"][name], numbers, expected)


@pytest.mark.parametrize("arguments", [
    ["--benchmark", "lfw=/nonexistent/lfw.bin"],
    ["--benchmark", "lfw={pairs}", "--folds", "0"],
    ["--benchmark", "lfw={unknown}"],
    ["--benchmark", "lfw={pairs}", "--folds", "ten"],
], ids=["missing_benchmark_path", "folds_0", "unknown_benchmark_kind", "folds_not_a_number"])
def test_a_rerun_failing_its_argument_checks_leaves_no_earlier_report(tmp_path, capsys, arguments):
    """Issue 28 item 4: the earlier report.json / report.md / ROC plots go whichever check fails (other files stay)."""
    out = tmp_path / "report"
    out.mkdir()
    for name in ("report.json", "report.md", "roc_lfw.png", "notes.txt"):
        (out / name).write_text("an earlier run's\n")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("path1,path2,issame\na.png,b.png,1\n")
    unknown = tmp_path / "pairs.txt"
    unknown.write_text("a b 1\n")
    argv = ["--model", str(tmp_path / "model"), "--out", str(out)]
    argv += [argument.format(pairs=pairs, unknown=unknown) for argument in arguments]
    try:
        assert main(argv) == 2
    except SystemExit as stop:  # argparse's own type check
        assert stop.code == 2
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_a_decompression_bomb_among_the_images_is_one_line(tmp_path, tfface_model, capsys):
    """Issue 28 item 8: an image whose header declares 20000 x 20000 pixels was a DecompressionBombError traceback."""
    from test_evaluation_readers import png_declaring

    save_png(tmp_path / "a.png", face(0, 0))
    (tmp_path / "bomb.png").write_bytes(png_declaring(20000, 20000))
    (tmp_path / "pairs.csv").write_text("a.png,bomb.png,1\na.png,a.png,1\n")
    code, _, err = run_main(["--model", tfface_model[0], "--benchmark", f"x={tmp_path / 'pairs.csv'}",
                             "--out", tmp_path / "report"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and lines == [f"error: benchmark x: cannot decode image {tmp_path / 'bomb.png'}: too large: "
                                   "Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be "
                                   "decompression bomb DOS attack."], err
    assert "Traceback" not in err
