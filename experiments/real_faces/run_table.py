"""The real-face study: a fine-tuning recipe chosen on CFP fold 6 and read on fold 7, then each method against the
baseline under its paper's condition, paired by seed.

    python -m experiments.real_faces.run_table [--cfp ../shared/data/cfp]
        [--onnx ../shared/models/mobilefacenet_fr_feature.onnx] [--until validation|recipe|methods] [--table-only]

1. prepare_cfp: aligned CFP, TFRecords of identities 001-300 (and its label-noise and long-tailed splits, their lists
   in results/), fold-6 (validation) and fold-7 (test) FP/FF pair CSVs, APRN's mean landmarks.
2. tools.import_weights: the ONNX network as the run dir runs/real_faces/imported (checked against onnxruntime).
3. The imported network as is: exported with tools.export's code and evaluated on folds 6 and 7; the ONNX file itself
   through onnxruntime on the same pairs (the export's parity).
4. grid_recipe_validation.yaml: the recipe's candidates, each read on fold 6 only (seed 0).
5. grid_recipe.yaml: the chosen candidate with more seeds, read on folds 6 and 7 (its seed-0 run is the validation
   grid's, read on fold 7 from its export after the choice).
6. grid_cfp.yaml: the method study (seed-major), every cell paired with the baseline on its split.
7. results/table.md and .json: per-seed numbers, mean +- standard error, each method's paired difference from its
   baseline (mean +- SE over the common seeds) and the verdict: "holds" when the difference exceeds 2 SE, "worse
   beyond 2 SE" when it is below -2 SE, else "not shown at this scale"; training time per run; LATSE's gate
   precision and recall on the injected noise. `--table-only` writes it from the runs finished so far.
Each step resumes: finished parts are read back, not redone.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfface import atomic, cli  # noqa: E402

cli.prefer_onednn()  # before TensorFlow: training steps take about half the time on the AVX2 development machine

import numpy as np  # noqa: E402

from experiments.real_faces import prepare_cfp  # noqa: E402
from tfface.errors import ConfigError  # noqa: E402

DATA = Path("data/cfp")
IMPORTED = Path("runs/real_faces/imported")
CROPS = DATA / "aligned" / "112x112"
GRIDS = {"validation": "experiments/real_faces/grid_recipe_validation.yaml",
         "recipe": "experiments/real_faces/grid_recipe.yaml", "methods": "experiments/real_faces/grid_cfp.yaml"}
BENCHMARKS = {"cfp_fp_fold6": str(DATA / "fold6_FP.csv"), "cfp_ff_fold6": str(DATA / "fold6_FF.csv"),
              "cfp_fp_fold7": str(DATA / "fold7_FP.csv"), "cfp_ff_fold7": str(DATA / "fold7_FF.csv")}
VALIDATION = ("cfp_fp_fold6", "cfp_ff_fold6")
# the first round's choice; each candidate of the second round changes one thing of it
REFERENCE_CANDIDATE = "finetune_2ep"
TEST = ("cfp_fp_fold7", "cfp_ff_fold7")
NOISY_SPLITS = ("noisy20", "noisy40")


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
    """{"imported": the exported imported run's entries, "onnxruntime": the ONNX file's} on every benchmark (each
    benchmark evaluated once and kept in runs/real_faces/imported/as_is.json)."""
    from tfface.export import export_run
    from experiments.ablation.ablate import evaluate_export
    from tools.evaluate import evaluate_benchmark, parse_benchmark

    result_path = IMPORTED / "as_is.json"
    rows = json.loads(result_path.read_text()) if result_path.is_file() else {"imported": {}, "onnxruntime": {}}
    missing = {name: path for name, path in benchmarks.items() if name not in rows["imported"]}
    if not missing:
        return rows
    export_dir = IMPORTED / "export" / "1"
    if not export_dir.is_dir():
        export_run(IMPORTED, export_dir)
    rows["imported"].update(evaluate_export(export_dir, missing))
    embedder = OnnxEmbedder(onnx_path)
    for name, path in missing.items():
        rows["onnxruntime"][name], _ = evaluate_benchmark(parse_benchmark(f"{name}={path}"), embedder, flip="sum",
                                                          pca=0, n_folds=10, batch_size=64)
    atomic.write_json(result_path, rows)
    return rows


def run_grid_seed_major(grid_path: Path) -> None:
    """experiments.ablation.ablate's grid, one seed at a time (a stopped study still has every cell's first seed)."""
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
    run_grid(grid_path)


def complete_results(grid_path: Path) -> None:
    """Finished runs of the grid that lack some of its benchmarks (the recipe's seed-0 run, trained and read on fold
    6 by the validation grid, then chosen) are evaluated on the missing ones from their export, once."""
    from experiments.ablation.ablate import EXPORT_VERSION, RESULT_FILE, cell_dir, evaluate_export, read_grid

    grid = read_grid(grid_path)
    for cell in grid.cells:
        for seed in grid.seeds:
            path = cell_dir(grid.out, cell, seed) / RESULT_FILE
            if not path.is_file():
                continue
            result = json.loads(path.read_text())
            missing = {name: where for name, where in grid.benchmarks.items() if name not in result["benchmarks"]}
            if missing:
                print(f"{cell.name} seed {seed}: reading {', '.join(missing)} from its export", flush=True)
                result["benchmarks"].update(evaluate_export(path.parent / "export" / EXPORT_VERSION, missing))
                atomic.write_json(path, result)


def finished_runs(grid_path: Path) -> Dict[str, Dict[int, Dict]]:
    """{cell: {seed: result.json}} of the grid's finished runs, in the grid's cell order (cells with none left out)."""
    from experiments.ablation.ablate import RESULT_FILE, cell_dir, read_grid

    grid = read_grid(grid_path)
    runs = {}
    for cell in grid.cells:
        done = {seed: json.loads(path.read_text()) for seed in grid.seeds
                if (path := cell_dir(grid.out, cell, seed) / RESULT_FILE).is_file()}
        if done:
            runs[cell.name] = done
    return runs


def mean_se(values: List[float]) -> Dict:
    """{"mean", "se" (sample std / sqrt(n); None for one value), "n"} of `values`."""
    values = np.asarray(values, np.float64)
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(values.mean()), "se": se, "n": int(len(values))}


def verdict(difference: Dict) -> str:
    """A paired difference {"mean", "se", "n"} -> "holds" (beyond +2 SE), "worse beyond 2 SE", or not shown."""
    if difference["n"] < 2:
        return "not shown at this scale (1 seed)"
    if difference["mean"] > 2 * difference["se"]:
        return "holds"
    if difference["mean"] < -2 * difference["se"]:
        return "worse beyond 2 SE"
    return "not shown at this scale"


def accuracy(run: Dict, benchmark: str) -> float:
    """A result.json's 10-fold accuracy on `benchmark`, in %."""
    return 100 * run["benchmarks"][benchmark]["accuracy_mean"]


def paired_baseline(cell: str) -> str:
    """`METHOD@SPLIT` is paired with `baseline@SPLIT`, a cell without a split with `baseline`."""
    return f"baseline@{cell.split('@', 1)[1]}" if "@" in cell else "baseline"


def row_summary(runs: Dict[int, Dict], benchmarks, baseline: Optional[Dict[int, Dict]] = None) -> Dict:
    """Per benchmark the per-seed accuracies, their mean +- SE and, against `baseline`'s runs of the same seeds, the
    paired difference (mean +- SE) and its verdict; the mean training time per run (s)."""
    row = {"seeds": sorted(runs), "train_seconds": float(np.mean([run["train_seconds"] for run in runs.values()])),
           "benchmarks": {}}
    for name in benchmarks:
        if not all(name in run["benchmarks"] for run in runs.values()):
            continue
        entry = {"per_seed": {seed: accuracy(runs[seed], name) for seed in sorted(runs)}}
        entry.update(mean_se(list(entry["per_seed"].values())))
        common = sorted(set(runs) & set(baseline or {}))
        if common:
            entry["vs_baseline"] = mean_se([accuracy(runs[seed], name) - accuracy(baseline[seed], name)
                                            for seed in common])
            entry["vs_baseline"]["verdict"] = verdict(entry["vs_baseline"])
        row["benchmarks"][name] = entry
    return row


def gate_precision_recall(entry: Dict) -> Dict:
    """tfface.gates.gate_statistics' entry -> the gate as a noise detector: precision (dropped examples that are
    noisy) and recall (noisy examples dropped)."""
    noisy_dropped = entry["noisy_dropped"] * entry["noisy"]
    clean_dropped = (1 - entry["clean_kept"]) * entry["clean"]
    dropped = noisy_dropped + clean_dropped
    return {"precision": noisy_dropped / dropped if dropped else float("nan"), "recall": entry["noisy_dropped"],
            "kept": entry["kept"]}


def gate_rows(grid_path: Path, compute: bool) -> Dict[str, Dict]:
    """For each noisy split whose LATSE teacher has finished: the teacher's top-k gate on that split (k of the
    grid's config), as precision and recall of the injected noise; cached beside the teacher."""
    from experiments.ablation.ablate import cell_config, read_grid

    grid = read_grid(grid_path)
    rows = {}
    for cell in grid.cells:
        if not cell.name.startswith("latse@"):
            continue
        config = cell_config(grid, cell, grid.seeds[0], grid.out)
        teacher, k = Path(config.gate["options"]["teacher"]), int(config.gate["options"]["k"])
        cache = teacher / f"gate_stats_k{k}.json"
        if not cache.is_file():
            if not compute or not (teacher / "head.weights.npz").is_file():
                continue
            from experiments.latse.gate_stats import teacher_gate_statistics

            atomic.write_json(cache, teacher_gate_statistics(teacher, config.data.train, ks=(k,)))
        statistics = json.loads(cache.read_text())
        rows[cell.name] = {"teacher": str(teacher), "k": k, **gate_precision_recall(statistics["k"][str(k)])}
    return rows


def study(as_is: Dict, grids: Dict[str, Path], gates: Dict[str, Dict]) -> Dict:
    """{"as_is": {row: {benchmark: %}}, "validation": {cell: row}, "recipe": {cell: row} (with the difference from
    the imported network), "methods": {cell: row paired with its baseline}, "gates": ...}; a grid missing from
    `grids` gives no rows."""
    result = {"as_is": {row: {name: 100 * entry["accuracy_mean"] for name, entry in entries.items()}
                        for row, entries in as_is.items()},
              "validation": {}, "recipe": {}, "methods": {}, "gates": gates}
    def finished(name):
        return finished_runs(grids[name]) if name in grids else {}

    candidates = finished("validation")
    for cell, runs in candidates.items():  # each paired with the first round's choice on the seeds both have
        reference = None if cell == REFERENCE_CANDIDATE else candidates.get(REFERENCE_CANDIDATE)
        result["validation"][cell] = row_summary(runs, VALIDATION, reference)
    for cell, runs in finished("recipe").items():
        row = row_summary(runs, [*VALIDATION, *TEST])
        for name, entry in row["benchmarks"].items():  # the imported network is deterministic: minus a constant
            entry["vs_imported"] = {"mean": entry["mean"] - result["as_is"]["imported"][name], "se": entry["se"],
                                    "n": entry["n"]}
        result["recipe"][cell] = row
    methods = finished("methods")
    for cell, runs in methods.items():
        baseline = None if cell == paired_baseline(cell) else methods.get(paired_baseline(cell), {})
        result["methods"][cell] = row_summary(runs, [*VALIDATION, *TEST], baseline)
        result["methods"][cell]["paired_with"] = None if baseline is None else paired_baseline(cell)
    return result


def _value(entry: Optional[Dict], key: str = "mean", signed: bool = False) -> str:
    if entry is None:
        return ""
    mean = f"{entry[key]:+.2f}" if signed else f"{entry[key]:.2f}"
    return mean if entry.get("se") is None else f"{mean} +- {entry['se']:.2f}"


def markdown(result: Dict) -> str:
    """The study's tables: the recipe (validation, then test) and the methods (paired differences, verdicts)."""
    lines = ["## The recipe", "",
             "Validation: fold 6 (identities 301-350); test: fold 7 (identities 351-400), read once per final row "
             "(candidates: validation only). Accuracy %, 10-fold, flip test; mean +- standard error over seeds.", "",
             "| row | seed(s) | FP fold 6 (val) | FF fold 6 (val) | FP fold 7 (test) | FF fold 7 (test) | "
             "training time per run |", "|---|---|---|---|---|---|---|"]
    for label, values in result["as_is"].items():
        lines.append(f"| {label}, as is | - | " + " | ".join(f"{values.get(name, float('nan')):.2f}"
                                                          for name in (*VALIDATION, *TEST)) + " | - |")
    for cell, row in result["validation"].items():
        cells = []
        for name in VALIDATION:
            entry = row["benchmarks"][name]
            per_seed = ", ".join(f"{value:.2f}" for value in entry["per_seed"].values())
            paired = (f"; {_value(entry['vs_baseline'], signed=True)} vs `{REFERENCE_CANDIDATE}`"
                      if "vs_baseline" in entry else "")
            cells.append(f"{_value(entry)} ({per_seed}){paired}" if len(entry["per_seed"]) > 1 else _value(entry))
        lines.append(f"| candidate `{cell}` | {', '.join(map(str, row['seeds']))} | {' | '.join(cells)} | - | - "
                     f"| {row['train_seconds'] / 60:.1f} min |")
    for cell, row in result["recipe"].items():
        names = [*VALIDATION, *TEST]
        for seed in row["seeds"]:
            lines.append(f"| `{cell}` | {seed} | " + " | ".join(
                f"{row['benchmarks'][name]['per_seed'][seed]:.2f}" for name in names) + " | |")
        lines.append(f"| `{cell}`, mean | n = {len(row['seeds'])} | " + " | ".join(
            _value(row["benchmarks"][name]) for name in names) + f" | {row['train_seconds'] / 60:.1f} min |")
        lines.append(f"| `{cell}` vs imported | | " + " | ".join(
            _value(row["benchmarks"][name]["vs_imported"], signed=True) for name in names) + " | |")
    lines += ["", "## The methods, each under its paper's condition", "",
              "Paired: each row minus its baseline on the same split with the same seed; mean +- SE over the common "
              "seeds. Verdict on the test fold: holds only beyond 2 SE.", "",
              "| row | paired with | seeds | FP fold 7 per seed | FP fold 7 | FP vs baseline | verdict (FP) | "
              "FF fold 7 | FF vs baseline | verdict (FF) | FP / FF fold 6 (val) | training time per run |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell, row in result["methods"].items():
        fp, ff = (row["benchmarks"].get(name) for name in TEST)
        vfp, vff = (row["benchmarks"].get(name) for name in VALIDATION)
        per_seed = ", ".join(f"{value:.2f}" for value in fp["per_seed"].values())
        lines.append(" | ".join([
            f"| {cell}", row["paired_with"] or "-", ", ".join(map(str, row["seeds"])), per_seed, _value(fp),
            _value(fp.get("vs_baseline"), signed=True), fp.get("vs_baseline", {}).get("verdict", ""), _value(ff),
            _value(ff.get("vs_baseline"), signed=True), ff.get("vs_baseline", {}).get("verdict", ""),
            f"{vfp['mean']:.2f} / {vff['mean']:.2f}", f"{row['train_seconds'] / 60:.1f} min |"]))
    if not result["methods"]:
        lines.append("| (no finished run yet) |" + " |" * 11)
    if result["gates"]:
        lines += ["", "LATSE's gate on the injected noise (the teacher's top-k over the noisy split):", "",
                  "| cell | teacher | k | kept | precision | recall |", "|---|---|---|---|---|---|"]
        for cell, gate in result["gates"].items():
            lines.append(f"| {cell} | {gate['teacher']} | {gate['k']} | {gate['kept']:.3f} | {gate['precision']:.3f} "
                         f"| {gate['recall']:.3f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.real_faces.run_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", default="../shared/data/cfp", help="the CFP folder (default ../shared/data/cfp)")
    parser.add_argument("--onnx", default="../shared/models/mobilefacenet_fr_feature.onnx",
                        help="the pretrained network (default ../shared/models/mobilefacenet_fr_feature.onnx)")
    parser.add_argument("--results", default="experiments/real_faces/results",
                        help="folder of table.md, table.json and the noise / long-tail lists")
    parser.add_argument("--until", choices=list(GRIDS), default="methods",
                        help="train and tabulate the grids up to this one (validation, recipe, methods; default all)")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from the runs finished so far, training nothing (a stopped run)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    names = list(GRIDS)[:list(GRIDS).index(args.until) + 1]
    grids = {name: Path(GRIDS[name]) for name in names}
    results = Path(args.results)
    try:
        onnx_path = Path(args.onnx)
        if not onnx_path.is_file():
            raise ConfigError(f"--onnx: file not found: {onnx_path}")
        prepare_cfp.prepare(Path(args.cfp), DATA, lists=results)
        import_network(onnx_path)
        as_is = as_is_rows(onnx_path, BENCHMARKS)
        if not args.table_only:
            for grid_path in grids.values():
                complete_results(grid_path)
                run_grid_seed_major(grid_path)
        gates = gate_rows(grids["methods"], compute=not args.table_only) if "methods" in grids else {}
        result = study(as_is, grids, gates)
    except (ConfigError, OSError) as error:
        return cli.user_error(error)
    text = markdown(result)
    atomic.write_text(results / "table.md", text)
    atomic.write_json(results / "table.json", result)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
