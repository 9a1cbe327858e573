"""experiments.ablation.ablate: a 2 cells x 2 seeds grid trains, exports, evaluates, tabulates, and resumes without training again."""
import json

import numpy as np
import pytest
import yaml

from tfface.data import synth
from tfface.errors import ConfigError
from experiments.ablation import ablate

SIZE = 16


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    data = root / "data"
    synth.generate(data, identities=4, images_per_identity=4, seed=2, test_identities=3, test_images_per_identity=2,
                   options=synth.SynthOptions(image_size=SIZE), folds=2, pairs_per_fold=2, batch_size=16,
                   progress=False)
    base = {
        "backbone": {"name": "tiny", "options": {"embedding_size": 8, "width": 4}},
        "head": {"name": "softmax"},
        "data": {"train": str(data), "shuffle_buffer": 16, "flip": False},
        # one replica: the grid runner is under test here, not MirroredStrategy (conftest's two CPU devices)
        "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "checkpoint_every_epoch": False,
                  "verbose": 2, "strategy": "default"},
        "regularizers": [{"name": "exclusive", "weight": 1.0}],
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {
        "base": str(root / "base.yaml"),
        "seeds": [3, 4],
        "benchmarks": {"synth": str(data / "test")},
        "overrides": ["regularizers.exclusive.enabled=false"],
        "cells": [{"name": "baseline"}, {"name": "exclusive", "set": ["regularizers.exclusive.enabled=true"]}],
    }
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    return root / "grid.yaml"


@pytest.fixture(scope="module")
def first_run(grid_file):
    out = grid_file.parent / "out"
    ablate.run_grid(grid_file, out, report=grid_file.parent / "report" / "table")
    return out


def _results(out):
    return {
        (cell, seed): json.loads((out / cell / f"seed{seed}" / "result.json").read_text())
        for cell in ("baseline", "exclusive") for seed in (3, 4)
    }


def test_every_cell_is_trained_exported_and_evaluated(first_run):
    results = _results(first_run)
    for (cell, seed), result in results.items():
        assert result["cell"] == cell and result["seed"] == seed
        assert result["finite"] and result["train_steps"] == 1
        assert (first_run / cell / f"seed{seed}" / "export" / "1" / "saved_model.pb").is_file()
        accuracy = result["benchmarks"]["synth"]["accuracy_mean"]
        assert 0.0 <= accuracy <= 1.0
        config = yaml.safe_load((first_run / cell / f"seed{seed}" / "config.yaml").read_text())
        assert config["seed"] == seed
        assert config["regularizers"][0]["enabled"] is (cell == "exclusive")
    assert "exclusive_loss" in results[("exclusive", 3)]["final_logs"]
    assert "exclusive_loss" not in results[("baseline", 3)]["final_logs"]


def test_table_is_mean_and_std_over_seeds(first_run, grid_file):
    results = _results(first_run)
    table = json.loads((first_run / "ablation.json").read_text())
    assert table == json.loads((grid_file.parent / "report" / "table.json").read_text())
    markdown = (first_run / "ablation.md").read_text()
    for cell in ("baseline", "exclusive"):
        accuracies = [results[(cell, seed)]["benchmarks"]["synth"]["accuracy_mean"] for seed in (3, 4)]
        mean = sum(accuracies) / 2
        std = abs(accuracies[0] - accuracies[1]) / 2  # population std of two values
        row = table["cells"][cell]["benchmarks"]["synth"]["accuracy"]
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std) and row["n"] == 2
        assert f"| {cell} | {100 * mean:.2f} ± {100 * std:.2f} |" in markdown


def test_second_invocation_trains_nothing(first_run, grid_file, monkeypatch, capsys):
    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(ablate, "run_cell", must_not_train)
    before = (first_run / "ablation.json").read_text()
    ablate.run_grid(grid_file, first_run)
    assert capsys.readouterr().out.count("finished earlier") == 4
    assert (first_run / "ablation.json").read_text() == before


def test_interrupted_cell_resumes_from_its_backup(first_run, grid_file):
    """A cell killed after training but before its result: the trainer's backup says it finished, so it is only
    exported and evaluated again, to the same numbers."""
    result_path = first_run / "exclusive" / "seed4" / "result.json"
    before = json.loads(result_path.read_text())
    result_path.unlink()
    ablate.run_grid(grid_file, first_run)
    after = json.loads(result_path.read_text())
    assert after["train_steps"] == 0
    assert after["benchmarks"]["synth"]["accuracy_mean"] == before["benchmarks"]["synth"]["accuracy_mean"]
    assert after["benchmarks"]["synth"]["auc"] == pytest.approx(before["benchmarks"]["synth"]["auc"])


@pytest.mark.parametrize("grid, message", [
    ({"seeds": [0], "benchmarks": {"a": "b"}, "cells": [{"name": "x"}]}, "missing 'base'"),
    ({"base": "c.yaml", "seeds": [0, 0], "benchmarks": {"a": "b"}, "cells": [{"name": "x"}]}, "seeds repeat"),
    ({"base": "c.yaml", "seeds": [0], "benchmarks": {"a": "b"}, "cells": [{"name": "x"}, {"name": "x"}]},
     "cell names repeat"),
    ({"base": "c.yaml", "seeds": [0], "benchmarks": {"a": "b"}, "cells": [{"name": "x", "sets": []}]},
     r"cells\[0\]: unknown key\(s\) sets"),
    ({"base": "c.yaml", "seeds": [0], "benchmarks": {"a": "b"}, "cells": [{"name": "x", "set": "a=1"}]},
     "must be a list of 'key=value' strings"),
    ({"base": "c.yaml", "seed": [0], "benchmarks": {"a": "b"}, "cells": []}, "unknown key"),
])
def test_bad_grid_is_named(tmp_path, grid, message):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ConfigError, match=message):
        ablate.read_grid(path)


def test_cli_reports_a_missing_grid(tmp_path, capsys):
    assert ablate.main(["--grid", str(tmp_path / "nope.yaml")]) == 2
    assert "--grid: file not found" in capsys.readouterr().err


def test_a_missing_benchmark_is_named_before_anything_trains(grid_file, tmp_path, monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("a cell trained although a benchmark is missing")

    monkeypatch.setattr(ablate, "run_cell", must_not_train)
    grid = yaml.safe_load(grid_file.read_text())
    grid["benchmarks"]["lfw"] = str(tmp_path / "no_such_benchmark")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ConfigError, match=r"grid benchmarks: benchmark lfw: not found: .*no_such_benchmark"):
        ablate.run_grid(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_is_replaced_atomically(tmp_path, monkeypatch):
    """A failed write leaves the previous table whole and no temporary file beside it."""
    grid = ablate.Grid(base="c.yaml", seeds=[0], benchmarks={"synth": "data"}, overrides=[],
                       cells=[ablate.Cell("baseline", [])], out=None)
    score = {"mean": 0.5, "std": 0.0, "n": 1}
    table = {"baseline": {"overrides": [], "seeds": [0], "benchmarks": {"synth": {"accuracy": score, "auc": score}},
                          "steps_per_second": 1.0, "finite": True}}
    ablate.write_report(grid, "grid.yaml", table, tmp_path / "table")
    before = {suffix: (tmp_path / f"table{suffix}").read_text() for suffix in (".md", ".json")}
    assert "| baseline | 50.00 ± 0.00 | 0.5000 ± 0.0000 | 1.00 | (none) |" in before[".md"]

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", failing_replace)
    table["baseline"]["benchmarks"]["synth"]["accuracy"] = {"mean": 0.9, "std": 0.0, "n": 1}
    with pytest.raises(OSError, match="disk full"):
        ablate.write_report(grid, "grid.yaml", table, tmp_path / "table")
    assert {suffix: (tmp_path / f"table{suffix}").read_text() for suffix in (".md", ".json")} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["table.json", "table.md"]
