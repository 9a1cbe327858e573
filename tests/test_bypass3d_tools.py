"""3D-BERL end to end: the three-stage tiny config trains; the Fig. 3 grid, the SynthFaces metrics, the Yale B light
correlation, the attribute transfer and the inference cost of the export, with their maths checked by hand."""
import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tfface import backbones, rendering
from tfface.data.schema import make_example
from tfface.data.writer import ShardedTFRecordWriter
from tfface.errors import ConfigError
from tfface.export import export_backbone, export_run
from tfface.runs import read_run
from experiments.bypass3d import attributes_transfer, light_correlation
from experiments.bypass3d import evaluate as evaluate_bypass3d
from experiments.bypass3d import visualize as visualize_bypass3d
from tools import inference_cost
from experiments.bypass3d.restore import load_bypass_run
from trainers.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "experiments" / "bypass3d" / "configs" / "bypass3d_synth_tiny.yaml"
NUM_CLASSES, MAP = 4, 8


def _write_split(writer, rng, per_class):
    for label in range(NUM_CLASSES):
        for _ in range(per_class):
            bright = rng.uniform() < 0.5
            image = rng.integers(150, 250, (16, 16, 3)) if bright else rng.integers(10, 110, (16, 16, 3))
            image[4 + label : 8 + label, 4:12] = 255 - 60 * label
            yaw, pitch, roll = rng.uniform(-20, 20, 3)
            l_dx, l_dy = rng.uniform(-0.5, 0.5, 2)
            direction = np.array([l_dx, l_dy, 1.0]) / math.sqrt(1 + l_dx**2 + l_dy**2)
            writer.write(make_example(
                image.astype(np.uint8), label, pose=[yaw, pitch, roll], light=[*rng.uniform(0.3, 0.7, 2), *direction],
                depth=rng.uniform(0.2, 0.6, (MAP, MAP)), albedo=rng.uniform(0, 1, (MAP, MAP, 3)),
                attributes=[float(bright), float(label % 2)],
            ))


@pytest.fixture(scope="module")
def synth_like(tmp_path_factory) -> Path:
    """A SynthFaces-shaped set (16x16 images; 8x8 depth, albedo; light, pose, 2 attributes): train 4 x 6, test 4 x 2."""
    out = tmp_path_factory.mktemp("synth_like")
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 6), ("test", 2)):
        with ShardedTFRecordWriter(out, prefix=prefix, examples_per_shard=50) as writer:
            _write_split(writer, rng, per_class)
    return out


@pytest.fixture(scope="module")
def run_dir(synth_like, tmp_path_factory) -> Path:
    work_dir = tmp_path_factory.mktemp("bypass_run") / "run"
    assert train_main(["--config", str(TINY_CONFIG), "--set", f"data.train={synth_like}",
                       "--set", f"work_dir={work_dir}", "--set", "train.strategy=default"]) == 0
    return work_dir


def test_the_three_stages_run_in_order(run_dir):
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    recon = [float(row["bypass3d_loss"]) for row in rows]
    assert len(rows) == 3 and recon[0] == 0.0 and recon[1] > 0.0 and recon[2] > 0.0
    assert float(rows[1]["loss"]) == pytest.approx(recon[1], rel=1e-5)  # aux stage: no identity loss
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "epoch-003.weights.h5"


def test_load_bypass_run_restores_the_checkpoint_and_names_problems(run_dir, tmp_path):
    run = load_bypass_run(run_dir)
    assert run.branch.map_size == MAP and run.checkpoint.name == "epoch-003.weights.h5"
    with pytest.raises(ConfigError, match="no config.yaml"):
        load_bypass_run(tmp_path)
    (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("bypass3d", "other"))
    (tmp_path / "run.json").write_text((run_dir / "run.json").read_text())
    with pytest.raises(ConfigError, match="no .bypass3d. entry under branches"):
        load_bypass_run(tmp_path)


def test_visualize_draws_one_row_per_face_and_seven_columns(run_dir, synth_like, tmp_path):
    out = tmp_path / "grid.png"
    assert visualize_bypass3d.main(["--run", str(run_dir), "--data", str(synth_like), "--count", "3",
                                    "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (7 * 2 * MAP, visualize_bypass3d.CAPTION_HEIGHT + 3 * 2 * MAP)
    assert visualize_bypass3d.main(["--run", str(run_dir), "--data", str(synth_like), "--count", "0",
                                    "--out", str(out)]) == 2
    figure = visualize_bypass3d.make_figure(run_dir, synth_like, "test", count=2, first=1, stride=5)
    assert figure.size == (7 * 2 * MAP, visualize_bypass3d.CAPTION_HEIGHT + 2 * 2 * MAP)  # examples 1 and 6 of 8
    with pytest.raises(ValueError, match="--first 8: .* has 8 examples"):
        visualize_bypass3d.make_figure(run_dir, synth_like, "test", count=1, first=8)


def test_shaded_depth_of_a_plane_is_the_light_cosine():
    K = rendering.intrinsics_from_fov(10.0, MAP, MAP)
    shaded = visualize_bypass3d.shade_depth(np.ones((1, MAP, MAP)), K)
    l_dx, l_dy = visualize_bypass3d.VIEW_LIGHT
    np.testing.assert_allclose(shaded, 0.15 + 0.85 / math.sqrt(1 + l_dx**2 + l_dy**2), rtol=1e-5)


def test_depth_metrics_by_hand():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.9, 1.1, (2, 5, 5))
    mask = np.ones_like(truth, bool)
    mask[1, :2] = False
    # SIDE ignores a global scale; with log-errors (0, 0.2) on two halves it is their standard deviation 0.1.
    np.testing.assert_allclose(evaluate_bypass3d.side(1.3 * truth, truth, mask), 0.0, atol=1e-6)
    halves = truth.copy()
    halves[0, :, :] *= np.where(np.arange(25).reshape(5, 5) < 12, 1.0, math.exp(0.2))
    one = np.zeros_like(mask)
    one[0, 0, :2], one[0, 4, :2] = True, True  # two pixels of each half
    np.testing.assert_allclose(evaluate_bypass3d.side(halves, truth, one)[0], 0.1, rtol=1e-9)
    np.testing.assert_allclose(evaluate_bypass3d.masked_correlation(2.0 * truth + 0.3, truth, mask), 1.0)
    np.testing.assert_allclose(evaluate_bypass3d.masked_correlation(-truth, truth, mask), -1.0)
    assert evaluate_bypass3d.pearson([1.0, 2.0, 4.0], [3.0, 5.0, 9.0]) == pytest.approx(1.0)
    assert evaluate_bypass3d.pearson([1.0, 1.0, 1.0], [3.0, 5.0, 9.0]) == 0.0
    # The plane z = 1 + 0.5 X (X metres to the right) against the plane z = 1: normals atan(0.5) apart everywhere.
    K = np.asarray(rendering.intrinsics_from_fov(10.0, 5, 5))
    columns = np.arange(5.0)[None, None, :] * np.ones((1, 5, 1))
    tilted = 1.0 / (1.0 - 0.5 * (columns - K[0, 2]) / K[0, 0])
    angle = evaluate_bypass3d.normal_angle_degrees(tilted, np.ones_like(tilted), np.ones_like(tilted, bool), K)
    np.testing.assert_allclose(angle, math.degrees(math.atan(0.5)), rtol=1e-4)


def test_evaluate_reports_every_number_against_its_baselines(run_dir, synth_like, tmp_path):
    out = tmp_path / "report.json"
    assert evaluate_bypass3d.main(["--run", str(run_dir), "--data", str(synth_like), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["examples"] == 8 and report["map_size"] == MAP
    numbers = [report["reconstruction_l1"][key] for key in ("bypass", "mean_image_baseline", "valid_fraction")]
    numbers += [value for part in report["depth"].values() if isinstance(part, dict) for value in part.values()]
    numbers += [*report["light_correlation"].values(), *report["pose_correlation"].values()]
    assert all(np.isfinite(numbers))
    assert report["depth"]["flat_baseline"]["correlation"] == 0.0  # a constant depth correlates with nothing


def test_exported_bypass3d_run_holds_the_backbone_only_and_costs_what_the_baseline_costs(run_dir, tmp_path):
    exported = export_run(run_dir, tmp_path / "models" / "bypass3d" / "1")
    run = read_run(run_dir)
    baseline = backbones.get_backbone(run["backbone"], **run["backbone_options"],
                                      input_shape=tuple(run["input_shape"]))
    plain = export_backbone(baseline, tmp_path / "models" / "baseline" / "1", metadata={})
    mine, theirs = inference_cost.cost(exported), inference_cost.cost(plain)
    assert mine["training_only_variables"] == [] and theirs["training_only_variables"] == []
    for key in ("variables", "parameters", "flops_per_image"):
        assert mine[key] == theirs[key] > 0, key
    assert mine["parameters"] == baseline.count_params()
    trained = load_bypass_run(run_dir)
    assert len(trained.branch.cooperative_variables()) > 0
    assert mine["variables"] == len(trained.trainer.backbone.variables)


def test_flops_of_a_conv_are_counted_in_closed_form(tmp_path):
    """Two one-conv models differing only in the kernel (3x3 vs 1x1, 3 -> 2 channels, 'same' on 16x16): the same
    flatten and L2 normalisation after, so their FLOPs differ by 2 * 16 * 16 * 2 * 3 * (9 - 1) multiply-adds."""
    def exported(kernel, name):
        image = keras.Input((16, 16, 3), name="image")
        conv = keras.layers.Conv2D(2, kernel, padding="same", use_bias=False)(image)
        model = keras.Model(image, {"embedding": keras.layers.Flatten()(conv)})
        return export_backbone(model, tmp_path / name / "1", {})

    difference = inference_cost.flops_per_image(exported(3, "k3")) - inference_cost.flops_per_image(exported(1, "k1"))
    assert difference == 2 * 16 * 16 * 2 * 3 * (9 - 1)


# ------------------------------------------------------------------------------------------------ Yale B light


def _fake_yaleb(root: Path, lights) -> Path:
    """Images whose brightness ramps toward the image's left as the azimuth grows (Yale B's sign), index.csv."""
    columns = np.linspace(-1.0, 1.0, 21)[None, :]
    rows = np.linspace(-1.0, 1.0, 24)[:, None]
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "subject", "light_azimuth_deg", "light_elevation_deg"])
        for index, (subject, azimuth, elevation) in enumerate(lights):
            grey = 120 - 50 * (azimuth / 130) * columns - 40 * (elevation / 90) * rows
            (root / subject).mkdir(exist_ok=True)
            path = f"{subject}/{subject}_{index}.png"
            Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).save(root / path)
            writer.writerow([path, subject, azimuth, elevation])
    return root


LIGHTS = [("yaleB01", a, e) for a, e in ((-60, 0), (-20, 10), (0, 20), (25, -10), (50, 45))] + [
    ("yaleB02", a, e) for a, e in ((-110, 5), (-35, -20), (10, -5), (70, 25), (120, 65))]


def test_light_correlation_tool_on_a_fake_yaleb(run_dir, tmp_path):
    yaleb = _fake_yaleb(tmp_path, LIGHTS)
    out_json, out_png = tmp_path / "light.json", tmp_path / "light.png"
    assert light_correlation.main(["--run", str(run_dir), "--yaleb", str(yaleb), "--out-json", str(out_json),
                                   "--out-png", str(out_png)]) == 0
    report = json.loads(out_json.read_text())
    assert report["images"] == 10 and report["front_images"] == 8 and out_png.stat().st_size > 0
    assert report["brightness_reference"]["azimuth"]["all"]["spearman"] == pytest.approx(1.0)
    assert report["brightness_reference"]["elevation"]["all"]["spearman"] == pytest.approx(1.0)
    for key in ("azimuth", "elevation"):
        assert -1.0 <= report[key]["all"]["pearson"] <= 1.0
    held_out = light_correlation.read_index(yaleb, ["yaleB02"])
    np.testing.assert_array_equal(held_out["azimuth"], [-110, -35, 10, 70, 120])
    assert light_correlation.main(["--run", str(run_dir), "--yaleb", str(yaleb), "--subjects", "yaleB99"]) == 2


def test_read_index_names_a_missing_column(tmp_path):
    (tmp_path / "index.csv").write_text("path,subject,light_azimuth_deg\na.png,s,0\n")
    with pytest.raises(ValueError, match="missing column.*light_elevation_deg"):
        light_correlation.read_index(tmp_path)


def test_real_yaleb_positive_azimuth_lights_the_image_left(shared_data):
    """The sign convention the tool documents, on real images: left-minus-right brightness grows with azimuth."""
    index = light_correlation.read_index(shared_data / "yaleb", ["yaleB01"])
    images = light_correlation.load_images(shared_data / "yaleb", index["path"], (32, 32))
    reference = light_correlation.brightness_asymmetry(images)
    front = np.abs(index["azimuth"]) <= 90
    correlation = np.corrcoef(reference["horizontal"][front], index["azimuth"][front])[0, 1]
    assert len(index["path"]) > 50 and correlation > 0.7


# ------------------------------------------------------------------------------------------------ attributes


def test_attribute_helpers_by_hand():
    np.testing.assert_allclose(attributes_transfer.mean_attribute_accuracy([[1.0, -2.0], [-0.5, 3.0]],
                                                                           [[1, 1], [0, 1]]), 75.0)
    chosen = attributes_transfer.subset_indices(10, 0.25, seed=3)
    assert len(chosen) == 3 and len(set(chosen)) == 3
    np.testing.assert_array_equal(chosen, attributes_transfer.subset_indices(10, 0.25, seed=3))
    assert len(attributes_transfer.subset_indices(10, 0.01, seed=0)) == 1
    assert attributes_transfer.parse_inits(["scratch", "a=runs/x"]) == [("scratch", ""), ("a", "runs/x")]
    for bad, message in ((["a"], "NAME=RUN_DIR"), (["scratch"], "at least one"), (["a=x", "a=y"], "unique")):
        with pytest.raises(ValueError, match=message):
            attributes_transfer.parse_inits(bad)


def test_attribute_labels_are_thresholded(synth_like):
    _, stored = attributes_transfer.load_split(synth_like, "test", (16, 16), threshold=0.5)
    _, all_present = attributes_transfer.load_split(synth_like, "test", (16, 16), threshold=-0.5)
    assert set(np.unique(stored)) <= {0.0, 1.0} and 0 < stored.mean() < 1
    np.testing.assert_array_equal(all_present, 1.0)


def test_attribute_transfer_table_has_a_row_per_init_and_learns_an_easy_attribute(run_dir, synth_like, tmp_path):
    out = tmp_path / "table.md"
    assert attributes_transfer.main(["--data", str(synth_like), "--init", "scratch", "--init", f"3d={run_dir}",
                                     "--fractions", "0.5", "1.0", "--epochs", "8", "--batch-size", "8",
                                     "--hidden", "16", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "| init | 50% | 100% |" and lines[2].startswith("| scratch |") and lines[3].startswith("| 3d |")
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["attributes"] == 2 and report["train_examples"] == 24 and report["test_examples"] == 8
    values = [value for row in report["mean_accuracy_percent"].values() for value in row.values()]
    assert all(0.0 <= value <= 100.0 for value in values)
    assert report["mean_accuracy_percent"]["scratch"]["1.0"] >= 50.0  # brightness is learnt, parity is a coin
