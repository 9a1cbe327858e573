"""The real-face table: every method fine-tuned from a pretrained MobileFaceNet on CFP, measured on fold 7.

    python -m experiments.real_faces.run_table [--cfp ../shared/data/cfp]
        [--onnx ../shared/models/mobilefacenet_fr_feature.onnx] [--grid experiments/real_faces/grid_cfp.yaml]
        [--report experiments/real_faces/results]

1. prepare_cfp: aligned CFP, TFRecords of identities 001-350, fold-7 FP/FF pair CSVs, APRN's mean landmarks.
2. tools.import_weights: the ONNX network as the run dir runs/real_faces/imported (checked against onnxruntime).
3. The imported network as is: exported with tools.export's code to runs/real_faces/imported/export/1 and evaluated
   like every row; the ONNX file itself is evaluated through onnxruntime on the same pairs (the export's parity).
4. The grid (experiments.ablation.ablate, seed-major: every cell's first seed before any second seed): each cell
   trains from the imported run with the same budget, is exported to <grid out>/<cell>/seed<k>/export/1 and evaluated.
5. REPORT.md / REPORT.json: FP and FF 10-fold accuracy on fold 7 (mean +- std over seeds), each row's difference from
   the baseline, and its fine-tuning time relative to the baseline's. `--table-only` writes them from the runs
   finished so far (rows say how many seeds they hold) without training anything.
Each step resumes: finished parts are read back, not redone.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from experiments.real_faces import prepare_cfp  # noqa: E402
from tfface import atomic, cli  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402

DATA = Path("data/cfp")
IMPORTED = Path("runs/real_faces/imported")
CROPS = DATA / "aligned" / "112x112"


class OnnxEmbedder:
    """The source ONNX network as a tools.evaluate embedder: uint8 RGB [N, 112, 112, 3] -> float32 [N, D] unit rows
    (the contract of an exported SavedModel's serving_default, so the flip test sums the same vectors)."""

    input_size = (112, 112)

    def __init__(self, path):
        self.path = path
        self.description = {"source": str(path), "input_size": list(self.input_size), "runtime": "onnxruntime"}

    def embed_batch(self, images) -> np.ndarray:
        """uint8 [n, 112, 112, 3] (numpy or tf.Tensor, as tools.evaluate's pipeline gives) -> [n, D] unit rows."""
        from tfface.onnx_import import onnx_embeddings

        embeddings = onnx_embeddings(self.path, (np.asarray(images, np.float32) - 127.5) / 128.0)
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def import_network(onnx_path: Path) -> None:
    if (IMPORTED / "backbone.weights.h5").is_file():
        return
    from tools import import_weights

    code = import_weights.main(["--onnx", str(onnx_path), "--backbone", "mobilefacenet", "--images", str(CROPS),
                                "--out", str(IMPORTED)])
    if code != 0:
        raise ConfigError(f"tools.import_weights on {onnx_path} failed (exit {code})")


def as_is_rows(onnx_path: Path, benchmarks: Dict[str, str]) -> Dict[str, Dict]:
    """{"imported": the exported imported run's entries, "onnxruntime": the ONNX file's} on every benchmark."""
    from tfface.export import export_run
    from experiments.ablation.ablate import evaluate_export
    from tools.evaluate import evaluate_benchmark, parse_benchmark

    result_path = IMPORTED / "as_is.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    export_dir = IMPORTED / "export" / "1"
    if not export_dir.is_dir():
        export_run(IMPORTED, export_dir)
    rows = {"imported": evaluate_export(export_dir, benchmarks), "onnxruntime": {}}
    embedder = OnnxEmbedder(onnx_path)
    for name, path in benchmarks.items():
        rows["onnxruntime"][name], _ = evaluate_benchmark(parse_benchmark(f"{name}={path}"), embedder, flip="sum",
                                                          pca=0, n_folds=10, batch_size=64)
    atomic.write_json(result_path, rows)
    return rows


def run_grid_seed_major(grid_path: Path) -> Dict:
    """experiments.ablation.ablate's grid, one seed at a time (a stopped table still has every cell's first seed)."""
    import yaml

    from experiments.ablation.ablate import read_grid, run_grid

    grid = read_grid(grid_path)
    with open(grid_path) as handle:
        spec = yaml.safe_load(handle)
    for count in range(1, len(grid.seeds)):
        partial = Path(grid.out) / f"seeds_{count}.yaml"
        partial.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(partial, yaml.safe_dump({**spec, "seeds": grid.seeds[:count]}))
        run_grid(partial)
    return run_grid(grid_path)


def finished_grid(grid_path: Path) -> Dict:
    """The grid's table (experiments.ablation.ablate's summary) over the runs finished so far, training nothing;
    cells with no finished run are left out."""
    from experiments.ablation.ablate import RESULT_FILE, cell_dir, read_grid, summarize

    grid = read_grid(grid_path)
    results = {cell.name: [json.loads(path.read_text()) for seed in grid.seeds
                           if (path := cell_dir(grid.out, cell, seed) / RESULT_FILE).is_file()]
               for cell in grid.cells}
    if not results.get("baseline"):
        raise ConfigError(f"{grid_path}: no finished baseline run in {grid.out}")
    return summarize(grid._replace(cells=[cell for cell in grid.cells if results[cell.name]]), results)


def _entry(runs: List[Dict], benchmark: str) -> Dict:
    values = [100 * run[benchmark]["accuracy_mean"] for run in runs]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def table(as_is: Dict, grid_table: Dict, benchmarks: Dict[str, str]) -> Dict:
    """Rows {name: {benchmark: {mean, std, n} in %, "delta": {benchmark: vs baseline}, "time_vs_baseline"}}."""
    rows = {
        "onnxruntime (the ONNX file)": {name: _entry([as_is["onnxruntime"]], name) for name in benchmarks},
        "imported, as is": {name: _entry([as_is["imported"]], name) for name in benchmarks},
    }
    baseline_rate = grid_table["baseline"]["steps_per_second"]
    for cell, row in grid_table.items():
        rows[cell] = {name: {key: 100 * value if key != "n" else value
                             for key, value in row["benchmarks"][name]["accuracy"].items()} for name in benchmarks}
        rate = row["steps_per_second"]
        rows[cell]["time_vs_baseline"] = baseline_rate / rate if rate and baseline_rate else None
    for row in rows.values():
        row["delta"] = {name: row[name]["mean"] - rows["baseline"][name]["mean"] for name in benchmarks}
    return rows


def markdown(rows: Dict, benchmarks: Dict[str, str]) -> str:
    names = list(benchmarks)
    header = ["row", *[f"{name} accuracy %" for name in names], *[f"{name} vs baseline" for name in names],
              "seeds", "fine-tuning time vs baseline"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        cells = [label]
        cells += [f"{row[name]['mean']:.2f} +- {row[name]['std']:.2f}" for name in names]
        cells += [f"{row['delta'][name]:+.2f}" for name in names]
        cells.append(str(row[names[0]]["n"]))
        time = row.get("time_vs_baseline")
        cells.append("" if time is None else f"{time:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.real_faces.run_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", default="../shared/data/cfp", help="the CFP folder (default ../shared/data/cfp)")
    parser.add_argument("--onnx", default="../shared/models/mobilefacenet_fr_feature.onnx",
                        help="the pretrained network (default ../shared/models/mobilefacenet_fr_feature.onnx)")
    parser.add_argument("--grid", default="experiments/real_faces/grid_cfp.yaml",
                        help="the experiments.ablation.ablate grid")
    parser.add_argument("--report", default="experiments/real_faces/results", help="writes REPORT.md and .json")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from the runs finished so far, training nothing (a stopped run)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from experiments.ablation.ablate import read_grid

    try:
        onnx_path = Path(args.onnx)
        if not onnx_path.is_file():
            raise ConfigError(f"--onnx: file not found: {onnx_path}")
        benchmarks = read_grid(args.grid).benchmarks
        prepare_cfp.prepare(Path(args.cfp), DATA)
        import_network(onnx_path)
        as_is = as_is_rows(onnx_path, benchmarks)
        grid_table = finished_grid(Path(args.grid)) if args.table_only else run_grid_seed_major(Path(args.grid))
        rows = table(as_is, grid_table, benchmarks)
    except (ConfigError, OSError) as error:
        return cli.user_error(error)
    report = Path(args.report)
    text = markdown(rows, benchmarks)
    atomic.write_text(report.with_suffix(".md"), text)
    atomic.write_json(report.with_suffix(".json"), rows)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
