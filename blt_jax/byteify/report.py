"""The report of a byteification as a Markdown table (`report.md` beside `report.json`)."""

from __future__ import annotations

import math


def _bpb(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def write_markdown(path: str, report: dict) -> None:
    """Writes the table: the teacher, each stage and the baseline, with held-out bits per byte, steps,
    bytes, training FLOPs and minutes."""
    lines = [
        f"# Byteification of {report['teacher']}",
        "",
        f"Teacher: {report['bytes_per_token']:.2f} bytes per token. Stage 2 patches by "
        + (
            "entropy" + (f" (threshold {report['threshold']:.4f})" if report.get("threshold") is not None else "")
            if report["patcher"] == "entropy"
            else "the teacher's tokens"
        )
        + ".",
        "",
        "| model | held-out bits per byte | steps | bytes | training FLOPs | minutes |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher | {_bpb(report['teacher_bpb'])} | | | | |",
    ]
    rows = list(report["stages"]) + ([report["baseline"]] if report.get("baseline") else [])
    for row in rows:
        name = f"stage {row['stage']}" if row["stage"] != "baseline" else "baseline (same BLT from scratch)"
        lines.append(
            f"| {name} | {_bpb(row['val_bpb'])} | {row['steps']} | {row['bytes']:,} | "
            f"{row['train_flops']:.3g} | {row['wall_seconds'] / 60:.1f} |"
        )
    lines += ["", f"Scoring: {report['scoring']}.", "", f"The byteified BLT: `{report['final_run']}`.", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
