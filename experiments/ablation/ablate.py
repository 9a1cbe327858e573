"""Ablation runner: train every (cell, seed) of a grid, export and evaluate each, and tabulate mean +- std over seeds.

    python -m experiments.ablation.ablate --grid experiments/ablation/grid_synth.yaml [--out DIR] \
        [--report experiments/ablation/results/ablation_synth]

The grid is a YAML file:

    base: experiments/ablation/configs/all_methods.yaml      # the training config every cell starts from (relative to the cwd)
    seeds: [0, 1]
    benchmarks: {synth: data/all_methods/test}   # NAME: PATH as tools.evaluate's --benchmark (LFW-layout pairs dir,
                                                 # .bin, pairs CSV or cfp:...)
    overrides: [branches.aprn.enabled=false]     # optional `--set` overrides applied to every cell first
    cells:
      - {name: baseline, set: []}
      - {name: aprn, set: [branches.aprn.enabled=true]}
    out: runs/ablation                           # optional; --out wins; default runs/ablate/<grid file stem>

Each (cell, seed) trains with trainers.train.train in OUT/<cell>/seed<seed>/ (config `seed` and `work_dir` set), is
exported with tfface.export.export_run to OUT/<cell>/seed<seed>/export/1 and evaluated on every benchmark with
tools.evaluate (flip test "sum", 10 folds). Its numbers go to OUT/<cell>/seed<seed>/result.json, written last: a cell
with that file is not trained again, and a killed cell resumes from the trainer's backup in its work dir.
The table (OUT/ablation.md and OUT/ablation.json; with --report PREFIX also PREFIX.md and PREFIX.json; each written to
a temporary file and renamed) has one row per cell: per benchmark the 10-fold verification accuracy and the AUC as
mean +- std over seeds (population std, ddof 0), and the mean training throughput (steps/s) of the cell's runs.
Every cell's config and every benchmark path are checked before the first cell trains.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from tfface import atomic, cli  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402

GRID_KEYS = {"base", "seeds", "benchmarks", "overrides", "cells", "out"}
CELL_KEYS = {"name", "set"}
RESULT_FILE = "result.json"
EXPORT_VERSION = "1"


class Cell(NamedTuple):
    name: str
    overrides: List[str]


class Grid(NamedTuple):
    base: str
    seeds: List[int]
    benchmarks: Dict[str, str]
    overrides: List[str]
    cells: List[Cell]
    out: Optional[str]


def _string_list(value, key: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key} must be a list of 'key=value' strings, got {value!r}")
    return list(value)


def read_grid(path) -> Grid:
    """Reads and checks a grid file (format in the module docstring); a bad field raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--grid: file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the grid must be a mapping")
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(GRID_KEYS))}")
    for key in ("base", "seeds", "benchmarks", "cells"):
        if key not in raw:
            raise ConfigError(f"{path}: missing '{key}'")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds repeat: {seeds}")
    benchmarks = raw["benchmarks"]
    if not isinstance(benchmarks, dict) or not benchmarks:
        raise ConfigError(f"{path}: benchmarks must be a non-empty mapping NAME: PATH, got {benchmarks!r}")
    cells = []
    for index, entry in enumerate(raw["cells"] or []):
        key = f"{path}: cells[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"{key} needs a 'name', got {entry!r}")
        if set(entry) - CELL_KEYS:
            raise ConfigError(f"{key}: unknown key(s) {', '.join(sorted(set(entry) - CELL_KEYS))}; known: name, set")
        if "/" in entry["name"] or entry["name"].startswith("."):
            raise ConfigError(f"{key}: name '{entry['name']}' must be usable as a folder name")
        cells.append(Cell(entry["name"], _string_list(entry.get("set"), f"{key}.set")))
    if not cells:
        raise ConfigError(f"{path}: cells is empty")
    names = [cell.name for cell in cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: cell names repeat: {names}")
    return Grid(
        base=str(raw["base"]), seeds=seeds, benchmarks={str(k): str(v) for k, v in benchmarks.items()},
        overrides=_string_list(raw.get("overrides"), f"{path}: overrides"), cells=cells, out=raw.get("out"),
    )


def cell_dir(out_dir, cell: Cell, seed: int) -> Path:
    return Path(out_dir) / cell.name / f"seed{seed}"


def cell_config(grid: Grid, cell: Cell, seed: int, out_dir) -> Dict:
    """The resolved training config of one (cell, seed): base <- grid overrides <- cell overrides <- seed, work dir."""
    from tfface.training.config import load_config

    work_dir = cell_dir(out_dir, cell, seed)
    overrides = [*grid.overrides, *cell.overrides, f"seed={seed}", f"work_dir={work_dir}",
                 f"name={cell.name}-seed{seed}"]
    return load_config(grid.base, overrides)


def check_benchmarks(grid: Grid) -> None:
    """Every benchmark of the grid exists and is of a kind tools.evaluate reads (ConfigError naming it otherwise)."""
    from tools.evaluate import parse_benchmark

    for name, path in grid.benchmarks.items():
        try:
            parse_benchmark(f"{name}={path}")
        except ConfigError as error:
            raise ConfigError(f"grid benchmarks: {error}") from None


def evaluate_export(export_dir, benchmarks: Dict[str, str]) -> Dict[str, Dict]:
    """tools.evaluate's report entry of each benchmark for an exported model (flip test "sum", 10 folds)."""
    from tfface.embedders import SavedModelEmbedder
    from tools.evaluate import evaluate_benchmark, parse_benchmark

    embedder = SavedModelEmbedder(export_dir)
    entries = {}
    for name, path in benchmarks.items():
        entry, _ = evaluate_benchmark(parse_benchmark(f"{name}={path}"), embedder, flip="sum", pca=0, n_folds=10,
                                      batch_size=64)
        entries[name] = entry
    return entries


def run_cell(grid: Grid, cell: Cell, seed: int, out_dir) -> Dict:
    """Trains (or resumes), exports and evaluates one (cell, seed); writes and returns its result."""
    import keras

    from tfface.export import export_run
    from trainers.train import prepare, train

    config = cell_config(grid, cell, seed, out_dir)
    work_dir = Path(config["work_dir"])
    keras.backend.clear_session()
    prepared = prepare(config)
    started = time.perf_counter()
    history = train(config, prepared)
    seconds = time.perf_counter() - started
    steps = len(history.history.get("loss", [])) * prepared.steps_per_epoch
    export_dir = work_dir / "export" / EXPORT_VERSION
    if export_dir.exists():  # a run killed after its export: the weights are final, export again
        shutil.rmtree(export_dir)
    export_run(work_dir, export_dir)
    last_logs = {key: float(values[-1]) for key, values in history.history.items() if values}
    result = {
        "cell": cell.name,
        "seed": seed,
        "overrides": [*grid.overrides, *cell.overrides],
        "final_logs": last_logs,
        "finite": bool(all(np.isfinite(value) for value in last_logs.values())),
        "train_seconds": seconds,
        "train_steps": steps,
        "steps_per_second": steps / seconds if steps else None,
        "benchmarks": evaluate_export(export_dir, grid.benchmarks),
    }
    atomic.write_json(work_dir / RESULT_FILE, result)
    keras.backend.clear_session()
    return result


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarize(grid: Grid, results: Dict[str, List[Dict]]) -> Dict:
    """{cell: {benchmark: {accuracy, auc: {mean, std, n}}, steps_per_second}} over each cell's seeds."""
    table = {}
    for cell in grid.cells:
        runs = results[cell.name]
        row = {"overrides": cell.overrides, "seeds": [run["seed"] for run in runs], "benchmarks": {}}
        for name in grid.benchmarks:
            row["benchmarks"][name] = {
                "accuracy": _mean_std([run["benchmarks"][name]["accuracy_mean"] for run in runs]),
                "auc": _mean_std([run["benchmarks"][name]["auc"] for run in runs]),
            }
        rates = [run["steps_per_second"] for run in runs if run["steps_per_second"]]
        row["steps_per_second"] = float(np.mean(rates)) if rates else None
        row["finite"] = all(run["finite"] for run in runs)
        table[cell.name] = row
    return table


def markdown_table(grid: Grid, table: Dict) -> str:
    """One row per cell; accuracy in %, mean +- std over the seeds."""
    header = ["cell"]
    for name in grid.benchmarks:
        header += [f"{name} accuracy (%)", f"{name} AUC"]
    header += ["steps/s", "--set"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in grid.cells:
        row = table[cell.name]
        values = [cell.name]
        for name in grid.benchmarks:
            accuracy, auc = row["benchmarks"][name]["accuracy"], row["benchmarks"][name]["auc"]
            values.append(f"{100 * accuracy['mean']:.2f} ± {100 * accuracy['std']:.2f}")
            values.append(f"{auc['mean']:.4f} ± {auc['std']:.4f}")
        values.append("" if row["steps_per_second"] is None else f"{row['steps_per_second']:.2f}")
        values.append(" ".join(f"`{text}`" for text in cell.overrides) or "(none)")
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_report(grid: Grid, grid_path, table: Dict, prefix) -> None:
    """PREFIX.md (the table with how it was made) and PREFIX.json."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    seeds = ", ".join(map(str, grid.seeds))
    text = (
        f"Grid `{grid_path}`: base config `{grid.base}`, seeds {seeds}; every cell also sets "
        f"{' '.join(f'`{o}`' for o in grid.overrides) or '(nothing)'}.\n"
        "Verification accuracy: 10-fold, flip test (sum), of the exported model; mean ± std over seeds.\n\n"
        + markdown_table(grid, table)
    )
    payload = {"grid": str(grid_path), "base": grid.base, "seeds": grid.seeds, "benchmarks": grid.benchmarks,
               "overrides": grid.overrides, "cells": table}
    atomic.write_text(prefix.with_suffix(".md"), text)
    atomic.write_json(prefix.with_suffix(".json"), payload)


def run_grid(grid_path, out_dir=None, report=None) -> Dict:
    """Runs every unfinished (cell, seed) of the grid, then writes the tables; returns the summary."""
    grid = read_grid(grid_path)
    out_dir = Path(out_dir or grid.out or Path("runs") / "ablate" / Path(grid_path).stem)
    for cell in grid.cells:  # every config and benchmark resolves before anything trains
        cell_config(grid, cell, grid.seeds[0], out_dir)
    check_benchmarks(grid)
    total = len(grid.cells) * len(grid.seeds)
    results: Dict[str, List[Dict]] = {cell.name: [] for cell in grid.cells}
    done = 0
    for cell in grid.cells:
        for seed in grid.seeds:
            done += 1
            result_path = cell_dir(out_dir, cell, seed) / RESULT_FILE
            if result_path.is_file():
                result = json.loads(result_path.read_text())
                print(f"[{done}/{total}] {cell.name} seed {seed}: finished earlier ({result_path})", flush=True)
            else:
                print(f"[{done}/{total}] {cell.name} seed {seed}: training in {result_path.parent}", flush=True)
                result = run_cell(grid, cell, seed, out_dir)
            scores = ", ".join(
                f"{name} {100 * entry['accuracy_mean']:.2f}%" for name, entry in result["benchmarks"].items()
            )
            print(f"[{done}/{total}] {cell.name} seed {seed}: {scores}", flush=True)
            results[cell.name].append(result)
    table = summarize(grid, results)
    write_report(grid, grid_path, table, out_dir / "ablation")
    if report:
        write_report(grid, grid_path, table, report)
    print(markdown_table(grid, table), end="")
    return table


@cli.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.ablation.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, help="grid YAML (see the module docstring)")
    parser.add_argument("--out", help="folder of the runs and tables (default: the grid's out, else runs/ablate/STEM)")
    parser.add_argument("--report", help="also write the tables as REPORT.md and REPORT.json "
                        "(e.g. experiments/ablation/results/ablation_synth)")
    args = parser.parse_args(argv)
    run_grid(args.grid, args.out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
