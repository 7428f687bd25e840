"""The study's report: one row per arm and seed (`report.json`), a table per arm over seeds
(`report.md`), the paper's orderings checked against the seed spread, bits per byte against
training FLOPs (`bpb_vs_flops.png`) and against bytes per patch or token (`bpb_vs_patch_size.png`).

A claim "A beats B" holds when A's mean held-out bits per byte is below B's; a claim "A matches B"
holds when A's mean is below B's plus a margin: the seed spread, and at least MATCH_MARGIN of B's mean
(with one seed the spread is zero, and "matches" would otherwise mean "beats"). The gap is beyond
the seed spread when it exceeds the larger of the two arms' ranges over seeds (with one seed there
is no spread to compare with, and the report says so).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # written to files; no display needed
import matplotlib.pyplot as plt

from blt_jax.quickstart.report import save_bpb_figure, series
from blt_jax.study.plan import ARMS, REFERENCE_ARM, TRANSFORMER_ARMS, label, scaling_size

# (claim, arm expected to have the lower bits per byte, the other arm, "beats" or "matches"): the
# paper's orderings, and the quickstart's comparison with a byte transformer.
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("entropy patching beats space patching", "blt_entropy", "blt_space", "beats"),
    ("space patching beats static patches", "blt_space", "blt_static", "beats"),
    ("hash n-gram embeddings help", "blt_entropy", "blt_nohash", "beats"),
    ("a BLT beats a byte transformer of equal training compute", "blt_entropy", "byte_lm", "beats"),
    ("a BLT matches a BPE-token transformer of equal training compute", "blt_entropy", "bpe_lm", "matches"),
)
COLORS = {
    "blt_entropy": "tab:blue",
    "blt_space": "tab:green",
    "blt_static": "tab:red",
    "blt_nohash": "tab:purple",
    "byte_lm": "tab:orange",
    "bpe_lm": "black",
}
MORE_COLORS = ("tab:cyan", "tab:olive", "tab:brown", "tab:pink", "tab:gray")
MATCH_MARGIN = 0.01


def by_arm(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Report rows grouped by arm: the arms of `ARMS` in their order, then the others as they come."""
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row["arm"], []).append(row)
    return {arm: groups[arm] for arm in sorted(groups, key=lambda a: list(ARMS).index(a) if a in ARMS else len(ARMS))}


def claims_for(arms: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """The claims among `arms`: the fixed ones, and per patch-size scaling arm, that it beats the
    reference BLT and the BPE transformer at equal inference FLOPs per byte."""
    out = list(CLAIMS)
    for arm in arms:
        size = scaling_size(arm)
        if size is not None:
            out.append(
                (
                    f"{size:g}-byte patches with a resized latent transformer beat the reference's at equal "
                    "inference FLOPs",
                    arm,
                    REFERENCE_ARM,
                    "beats",
                )
            )
            out.append(
                (
                    f"a BLT of {size:g}-byte patches beats the BPE-token transformer at equal inference FLOPs",
                    arm,
                    "bpe_lm",
                    "beats",
                )
            )
    return out


def color(arm: str, index: int) -> str:
    return COLORS.get(arm) or MORE_COLORS[index % len(MORE_COLORS)]


def orderings(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each claim whose two arms were trained: whether it held, the gap between the arms' mean held-out
    bits per byte, the seed spread, and whether the gap exceeds it (None with a single seed)."""
    groups = by_arm(rows)
    out = []
    for claim, better, worse, kind in claims_for(list(groups)):
        if better not in groups or worse not in groups:
            continue
        a = [r["val_bpb"] for r in groups[better]]
        b = [r["val_bpb"] for r in groups[worse]]
        gap = statistics.mean(b) - statistics.mean(a)
        spread = max(max(a) - min(a), max(b) - min(b))
        seeds = min(len(a), len(b))
        held = gap > 0 if kind == "beats" else gap > -max(spread, MATCH_MARGIN * statistics.mean(b))
        out.append(
            dict(
                claim=claim,
                better=better,
                worse=worse,
                held=held,
                gap_bpb=gap,
                seed_spread_bpb=spread,
                seeds=seeds,
                beyond_spread=(abs(gap) > spread) if seeds >= 2 else None,
            )
        )
    return out


def _mean_range(values: Sequence[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def markdown(rows: Sequence[Mapping[str, Any]], claims: Sequence[Mapping[str, Any]]) -> str:
    """The report as markdown: a row per arm (mean and range over seeds) and the orderings."""
    lines = [
        "| arm | seeds | held-out bits/byte | train MFLOP/byte | inference MFLOP/byte (with entropy LM) "
        "| params (hash tables) | bytes/patch | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, group in by_arm(rows).items():
        first = group[0]
        with_lm = first["inference_flops_per_byte_with_entropy_lm"]
        lines.append(
            f"| {label(arm)} | {len(group)} | {_mean_range([r['val_bpb'] for r in group], '.3f')} "
            f"| {first['train_flops_per_byte'] / 1e6:.2f} | {first['inference_flops_per_byte'] / 1e6:.2f} "
            f"({with_lm / 1e6:.2f}) | {first['params'] / 1e6:.2f}M ({first['hash_params'] / 1e6:.2f}M) "
            f"| {_mean_range([r['bytes_per_patch_or_token'] for r in group], '.2f')} "
            f"| {_mean_range([r['wall_seconds'] / 60 for r in group], '.1f')} |"
        )
    lines.append("")
    for c in claims:
        verdict = "held" if c["held"] else "did not hold"
        if c["beyond_spread"] is None:
            spread = "one seed: no spread to compare with"
        else:
            spread = ("beyond" if c["beyond_spread"] else "within") + f" the seed spread ({c['seed_spread_bpb']:.3f})"
        lines.append(f"- {c['claim']}: {verdict} (gap {c['gap_bpb']:+.3f} bits/byte, {spread})")
    return "\n".join(lines) + "\n"


def figure(path: str, rows: Sequence[Mapping[str, Any]], curves: Mapping[tuple[str, int], list]) -> str:
    """Bits per byte against training FLOPs: each run's validation curve during training (bytes seen x
    its training FLOPs per byte; faint) and its held-out score at the end (a marker per seed).

    Args:
      path: the PNG to write.
      rows: report rows.
      curves: (arm, seed) -> the run's metrics.jsonl rows.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for index, (arm, group) in enumerate(by_arm(rows).items()):
        shade = color(arm, index)
        for i, row in enumerate(group):
            steps, bpb = series(curves.get((arm, row["seed"]), []), "eval_bpb")
            if len(steps):
                per_step = row["trained_bytes"] / row["steps"]
                ax.plot(
                    steps * per_step * row["train_flops_per_byte"] / 1e12, bpb, color=shade, alpha=0.35, lw=1.0, ls="--"
                )
            ax.scatter(
                [row["train_flops"] / 1e12],
                [row["val_bpb"]],
                color=shade,
                edgecolors="black",
                zorder=3,
                label=f"{label(arm)}, held-out" if i == 0 else None,
            )
    ax.set_title(
        "Bits per byte at matched training compute\n(dashed: validation rows during training; "
        "markers: held-out text, one per seed)",
        fontsize=9,
    )
    return save_bpb_figure(fig, ax, path, "training FLOPs (x 10^12)")


def patch_size_figure(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Held-out bits per byte against the mean bytes per patch (BLTs), per token (the BPE transformer)
    or 1 (the byte transformer): every arm has the same FLOPs per byte, in training and so in inference
    (training = 3 x forward), so this is the paper's patch-size comparison at a fixed inference budget.
    The reference BLT and its patch-size scaling arms are joined by a line through their means.

    Args:
      path: the PNG to write.
      rows: report rows.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    line = []
    for index, (arm, group) in enumerate(by_arm(rows).items()):
        x = [r["bytes_per_patch_or_token"] for r in group]
        y = [r["val_bpb"] for r in group]
        marker = "s" if arm in TRANSFORMER_ARMS else "o"
        ax.scatter(x, y, color=color(arm, index), marker=marker, edgecolors="black", zorder=3, label=label(arm))
        if arm == REFERENCE_ARM or scaling_size(arm) is not None:
            line.append((statistics.mean(x), statistics.mean(y)))
    if len(line) > 1:
        xs, ys = zip(*sorted(line))
        ax.plot(xs, ys, color=COLORS[REFERENCE_ARM], lw=1.0, alpha=0.6, zorder=2)
    budget = statistics.mean(r["inference_flops_per_byte"] for r in rows) / 1e6
    ax.set_title(
        f"Held-out bits per byte at {budget:.2f} MFLOP/byte of inference (entropy LM apart)\n"
        "(one marker per seed; the line joins the means of the reference BLT and its patch-size scaling arms)",
        fontsize=9,
    )
    return save_bpb_figure(fig, ax, path, "bytes per patch (BLT) or per token (BPE); 1 for the byte transformer")
