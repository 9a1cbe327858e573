"""Mean and spread of several `experiments.aprn.compare` reports (one per training seed) as one Markdown table.

    python -m experiments.aprn.summary runs/aprn_compare_train_s0.json runs/aprn_compare_train_s1.json \\
        runs/aprn_compare_train_s2.json --out experiments/aprn/results/aprn_synth.json

Every report must hold the same run names and stages. Per run and measurement the table shows the mean over the
reports +- their population standard deviation, and, for APRN's three claims, how many reports agree with each
against the reference run (--reference, default the first run name): a lower pose-probe accuracy, a higher stage-4
landmark-probe error, a frontal-profile verification accuracy no lower than the reference's by more than that
report's 10-fold standard deviation.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfface import atomic, cli  # noqa: E402

MEASURES = {
    "pose-probe SVM accuracy": lambda result, stage: result["pose_probe"]["val_accuracy"],
    "landmark-probe L1": lambda result, stage: result["landmark_probe"][stage]["l1"],
    "landmark-probe L1 / constant": lambda result, stage: result["landmark_probe"][stage]["relative_l1"],
    "frontal-profile verification": lambda result, stage: result["cross_pose"]["accuracy_mean"],
}


def read_reports(paths: Sequence[str]) -> List[Dict]:
    """The `results` of each aprn_compare JSON; raises ValueError naming the file that differs or is unreadable."""
    reports = []
    for path in paths:
        try:
            with open(path) as handle:
                reports.append(json.load(handle)["results"])
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise ValueError(f"{path}: not an aprn_compare report ({error})") from error
        if list(reports[-1]) != list(reports[0]):
            raise ValueError(f"{path}: runs {list(reports[-1])} differ from {paths[0]}'s {list(reports[0])}")
    return reports


def summarize(reports: Sequence[Dict], stage: str = "stage4", reference: Optional[str] = None) -> Dict:
    """{"runs": {name: {measure: {"mean", "std", "values"}}}, "agreement": {name: {claim: count}}, "reports": n}.

    std is the population standard deviation over the reports; the agreement counts compare each run with the
    reference run report by report (APRN's claims: pose probe lower, landmark error higher, verification kept).
    """
    names = list(reports[0])
    reference = reference or names[0]
    if reference not in names:
        raise ValueError(f"--reference {reference!r} is not one of the runs {names}")
    for index, report in enumerate(reports):
        for name in names:
            if stage not in report[name]["landmark_probe"]:
                raise ValueError(f"report {index + 1}, run {name}: no landmark probe of --stage {stage}")
    summary = {"reports": len(reports), "stage": stage, "reference": reference, "runs": {}, "agreement": {}}
    for name in names:
        summary["runs"][name] = {}
        for measure, read in MEASURES.items():
            values = [float(read(report[name], stage)) for report in reports]
            summary["runs"][name][measure] = {
                "mean": float(np.mean(values)), "std": float(np.std(values)), "values": values,
            }
    for name in names:
        if name == reference:
            continue
        pairs = [(report[name], report[reference]) for report in reports]
        summary["agreement"][name] = {
            "pose probe lower": sum(run["pose_probe"]["val_accuracy"] < ref["pose_probe"]["val_accuracy"]
                                    for run, ref in pairs),
            "landmark error higher": sum(run["landmark_probe"][stage]["l1"] > ref["landmark_probe"][stage]["l1"]
                                         for run, ref in pairs),
            "verification kept": sum(
                run["cross_pose"]["accuracy_mean"] >= ref["cross_pose"]["accuracy_mean"] - run["cross_pose"]["accuracy_std"]
                for run, ref in pairs),
        }
    return summary


def markdown_table(summary: Dict) -> str:
    """Rows: runs; columns: the measurements as mean +- std over the reports."""
    measures = list(MEASURES)
    header = ["run"] + [f"{measure} ({summary['stage']})" if "landmark" in measure else measure for measure in measures]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in summary["runs"].items():
        cells = [name] + [f"{row[measure]['mean']:.3f} +- {row[measure]['std']:.3f}" for measure in measures]
        lines.append("| " + " | ".join(cells) + " |")
    for name, counts in summary["agreement"].items():
        claims = ", ".join(f"{claim} {count}/{summary['reports']}" for claim, count in counts.items())
        lines.append(f"\n{name} against {summary['reference']}, report by report: {claims}")
    return "\n".join(lines)


@cli.command(errors=(*cli.USER_ERRORS, KeyError))
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.aprn.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="aprn_compare --out JSON files, one per training seed")
    parser.add_argument("--stage", default="stage4", help="landmark-probe stage to tabulate")
    parser.add_argument("--reference", help="run the claims are checked against (default: the first run)")
    parser.add_argument("--out", help="JSON file for the summary")
    args = parser.parse_args(argv)
    summary = summarize(read_reports(args.reports), args.stage, args.reference)
    print(markdown_table(summary))
    if args.out:
        atomic.write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
