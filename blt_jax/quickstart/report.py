"""The quickstart's figures and its summary table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # written to files; no display needed
import matplotlib.pyplot as plt
import numpy as np

LABELS = {"blt": "BLT", "baseline": "byte LM of matched compute", "entropy_lm": "entropy LM"}
COLORS = {"blt": "tab:blue", "baseline": "tab:orange", "entropy_lm": "tab:gray"}


def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric of a metrics.jsonl."""
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing): the per-step loss
    of a small batch of source files swings by a bit per byte from batch to batch."""
    out, acc = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def _curves(
    path: str, runs: Mapping[str, tuple[list, float]], scale, xlabel: str, title: str, show_flops: bool = False
) -> str:
    """Training (smoothed; raw faint) and validation bits per byte of every run against
    x = scale(steps, FLOPs per byte)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (rows, flops_per_byte) in runs.items():
        color, label = COLORS.get(name), LABELS.get(name, name)
        if show_flops:
            label = f"{label} ({flops_per_byte / 1e6:.1f} MFLOP/byte)"
        steps, bpb = series(rows, "bpb")
        if len(steps):
            ax.plot(scale(steps, flops_per_byte), bpb, color=color, alpha=0.2, lw=0.8)
            ax.plot(scale(steps, flops_per_byte), smooth(bpb), color=color, lw=1.2, label=f"{label}, training")
        eval_steps, eval_bpb = series(rows, "eval_bpb")
        if len(eval_steps):
            ax.plot(
                scale(eval_steps, flops_per_byte),
                eval_bpb,
                color=color,
                ls="--",
                marker="o",
                markeredgecolor="black",
                label=f"{label}, validation (final {eval_bpb[-1]:.3f})",
            )
    ax.set_title(title)
    return save_bpb_figure(fig, ax, path, xlabel)


def save_bpb_figure(fig, ax, path: str, xlabel: str) -> str:
    """Labels a bits-per-byte plot (grid, legend), writes it to `path` (PNG) and closes it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(path: str, runs: Mapping[str, tuple[list, float]], bytes_per_step: int) -> str:
    """Bits per byte against training bytes seen, one colour per run.

    Args:
      path: the PNG to write.
      runs: name -> (metrics.jsonl rows, training FLOPs per byte).
      bytes_per_step: B x N of every run.
    """
    return _curves(
        path, runs, lambda steps, _: steps * bytes_per_step / 1e6, "training bytes (millions)", "Learning curves"
    )


def plot_bpb_vs_flops(path: str, runs: Mapping[str, tuple[list, float]], bytes_per_step: int) -> str:
    """Bits per byte against cumulative training FLOPs (bytes seen x the run's FLOPs per byte)."""
    return _curves(
        path,
        runs,
        lambda steps, flops: steps * bytes_per_step * flops / 1e12,
        "training FLOPs (x 10^12)",
        "Bits per byte at equal training compute",
        show_flops=True,
    )


def entropy_figure(path: str, config, params, text: str, threshold: float) -> str:
    """The entropy figure of `text` under an entropy LM, patched at `threshold`."""
    from blt_jax.patching.plot import text_entropy_figure
    from blt_jax.tokenizer import encode

    return text_entropy_figure(
        path,
        config,
        params,
        encode(text, add_eos=False),
        threshold,
        title="entropy of the next byte (quickstart entropy LM)",
    )


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary_table(results: Sequence[Any]) -> str:
    """A fixed-width table: stage, time, bytes/s, BPB, mean patch length."""
    header = f"{'stage':<14}{'time':>9}{'bytes/s':>12}{'val BPB':>9}{'patch len':>11}  notes"
    lines = [header, "-" * len(header)]
    for r in results:
        note = r.detail.get("note", "")
        lines.append(
            f"{r.name:<14}{r.seconds:>8.1f}s{_cell(r.bytes_per_s, ',.0f'):>12}{_cell(r.bpb, '.3f'):>9}"
            f"{_cell(r.mean_patch_length, '.2f'):>11}  {note}"
        )
    lines.append(f"{'total':<14}{sum(r.seconds for r in results):>8.1f}s")
    return "\n".join(lines)
