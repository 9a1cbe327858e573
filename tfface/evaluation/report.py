"""Evaluation reports: JSON (written atomically), a Markdown table and one ROC plot PNG per benchmark.

A report is a dict {"command", "model", "settings", "benchmarks": {name: entry}}; an entry holds the numbers of
`verification_entry` plus whatever the caller adds (kind, source, ...). `write_report` adds to each entry the file
name of its ROC plot. `remove_report` deletes a previous report from a folder, so that a run which fails before
`write_report` leaves no earlier run's report looking like its own.
"""
import math
from pathlib import Path
from typing import Dict, Mapping, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from tfface import atomic  # noqa: E402

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
MARKDOWN_TAR_FARS = ("1e-04", "1e-03", "1e-02")

RocCurve = Tuple[np.ndarray, np.ndarray]


def far_key(far: float) -> str:
    """The JSON key of a FAR: 1e-4 -> "1e-04"."""
    return f"{far:.0e}"


def far_is_measured(far: float, negative_pairs: int) -> bool:
    """Whether `negative_pairs` impostor pairs can show a false accept rate as small as `far`: at least one false
    accept must be allowed (far * negatives >= 1); below that a TAR@FAR is the TAR at no false accept, not at `far`."""
    return far * negative_pairs >= 1.0 - 1e-9


def tar_cell(far: float, tar: float, negative_pairs: int) -> str:
    """A TAR@FAR in percent for a table, or "n/a (needs >= N negatives)" when `far` is not measured."""
    if not far_is_measured(far, negative_pairs):
        return f"n/a (needs >= {math.ceil(1.0 / far - 1e-9)} negatives)"
    return f"{100 * tar:.2f}"


def verification_entry(metrics: Mapping, pairs: int, images: int, seconds: float, negative_pairs: int) -> Dict:
    """JSON-ready numbers of one benchmark from `tfface.evaluation.evaluate_pairs`' result.

    Returns accuracy_mean, accuracy_std, fold_accuracies, auc, eer, best_threshold (squared L2 distance), val,
    val_std, far, tar_at_far ({far_key: tar}; FARs below 1 / negative_pairs hold the TAR at no false accept, which
    the Markdown table shows as n/a), and pairs, negative_pairs, images (distinct images embedded), seconds (wall
    time).
    """
    return {
        "accuracy_mean": float(metrics["accuracy_mean"]),
        "accuracy_std": float(metrics["accuracy_std"]),
        "fold_accuracies": [float(accuracy) for accuracy in metrics["fold_accuracies"]],
        "auc": float(metrics["auc"]),
        "eer": float(metrics["eer"]),
        "best_threshold": float(metrics["best_threshold"]),
        "val": float(metrics["val"]),
        "val_std": float(metrics["val_std"]),
        "far": float(metrics["far"]),
        "tar_at_far": {far_key(far): float(tar) for far, tar in metrics["tar_at_far"].items()},
        "pairs": int(pairs),
        "negative_pairs": int(negative_pairs),
        "images": int(images),
        "seconds": float(seconds),
    }


def plot_roc(path: Path, name: str, curve: RocCurve, entry: Mapping) -> None:
    """ROC plot PNG: true accept rate over false accept rate on a log axis from the power of ten at or below the
    smallest non-zero FAR (where FAR 0 points are drawn) to 1, the equal error rate point marked."""
    fpr, tpr = (np.asarray(values, dtype=np.float64) for values in curve)
    smallest = fpr[fpr > 0].min() if np.any(fpr > 0) else 1e-3
    left = 10.0 ** np.floor(np.log10(smallest))
    figure, axes = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    axes.plot(np.maximum(fpr, left), tpr, color="tab:blue", linewidth=1.8, label=f"AUC {entry['auc']:.4f}")
    eer = entry["eer"]
    axes.plot([eer], [1.0 - eer], "o", color="tab:red", label=f"EER {100 * eer:.2f}%")
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlim(left, 1.0)
    axes.set_ylim(0.0, 1.005)
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_title(
        f"{name}: accuracy {100 * entry['accuracy_mean']:.2f} ± {100 * entry['accuracy_std']:.2f}%, "
        f"{entry['pairs']} pairs", fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    atomic.write_figure(path, figure)
    plt.close(figure)


def markdown_report(report: Mapping) -> str:
    """The report as Markdown: the model and settings, a table of the main numbers (percentages), and the ROC
    plots."""
    model = report["model"]
    settings = report["settings"]
    lines = [
        "# Verification report",
        "",
        f"Model: `{model['source']}` ({model['input_size'][0]}x{model['input_size'][1]} -> "
        f"{model['embedding_size']}-d); flip: {settings['flip']}; PCA: {settings['pca'] or 'none'}; VAL at target "
        f"FAR {far_key(settings['val_far_target'])}.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| benchmark | kind | pairs | images | accuracy (%) | AUC | EER (%) | VAL @ FAR (%) | "
        + " | ".join(f"TAR@FAR={far} (%)" for far in MARKDOWN_TAR_FARS)
        + " | seconds |",
        "|" + "---|" * (9 + len(MARKDOWN_TAR_FARS)),
    ]
    for name, entry in report["benchmarks"].items():
        tars = " | ".join(tar_cell(float(far), entry["tar_at_far"][far], entry["negative_pairs"])
                          for far in MARKDOWN_TAR_FARS)
        lines.append(
            f"| {name} | {entry['kind']} | {entry['pairs']} | {entry['images']} | "
            f"{100 * entry['accuracy_mean']:.2f} ± {100 * entry['accuracy_std']:.2f} | {entry['auc']:.4f} | "
            f"{100 * entry['eer']:.2f} | {100 * entry['val']:.2f} @ {100 * entry['far']:.3f} | {tars} | "
            f"{entry['seconds']:.1f} |"
        )
    lines.append("")
    for name, entry in report["benchmarks"].items():
        lines.extend([f"![ROC {name}]({entry['roc_plot']})", ""])
    return "\n".join(lines)


def remove_report(out_dir) -> None:
    """Deletes the files `write_report` leaves in `out_dir` (report.json first, then report.md, roc_*.png and
    partial files of an interrupted write); other files stay. An undeletable file raises a ValueError naming it."""
    if out_dir is None or not Path(out_dir).is_dir():
        return
    out_dir = Path(out_dir)
    stale = [out_dir / REPORT_JSON, out_dir / REPORT_MARKDOWN]
    stale += sorted(out_dir.glob("roc_*.png")) + sorted(out_dir.glob(".roc_*")) + sorted(out_dir.glob(".report.*"))
    for path in stale:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise ValueError(f"cannot remove the previous report's {path}: {error.strerror or error}") from None


def write_report(out_dir, report: Dict, curves: Mapping[str, RocCurve]) -> Path:
    """Writes `out_dir`/roc_NAME.png per benchmark (curves: {name: (fpr [T], tpr [T])}), report.md and, last,
    report.json, each atomically; records each plot's file name in its entry as "roc_plot". Returns the JSON path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, entry in report["benchmarks"].items():
        entry["roc_plot"] = f"roc_{name}.png"
        plot_roc(out_dir / entry["roc_plot"], name, curves[name], entry)
    atomic.write_text(out_dir / REPORT_MARKDOWN, markdown_report(report))
    json_path = out_dir / REPORT_JSON
    atomic.write_json(json_path, report)
    return json_path
