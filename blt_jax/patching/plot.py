"""The entropy figure of the BLT paper: entropy per byte, the threshold, and the patches it makes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display needed (notebooks still render)
import matplotlib.pyplot as plt
import numpy as np

from blt_jax import paths
from blt_jax.config import EntropyLMConfig, PatchingConfig
from blt_jax.nn.entropy_lm import EntropyLM, entropies_from_logits
from blt_jax.patching.rules import entropy_starts
from blt_jax.tokenizer import OFFSET, SPECIAL_NAMES


def tick_label(token: int) -> str:
    """A short printable label for one token: the character, '_' for a space, escapes otherwise."""
    if token in SPECIAL_NAMES:
        return SPECIAL_NAMES[token]
    byte = token - OFFSET
    if byte == 0x20:
        return "_"
    if 0x20 < byte < 0x7F:
        return chr(byte)
    return f"\\x{byte:02x}" if 0 <= byte < 256 else "?"


def plot_entropies(
    tokens: Sequence[int],
    entropies: Sequence[float],
    threshold: float,
    starts: Sequence[bool] | None = None,
    title: str | None = None,
    ax=None,
):
    """Draws entropies per byte with the threshold line and patch boundaries.

    Args:
      tokens: int [N] token ids (ticks show their characters).
      entropies: float [N] entropy (nats) of the prediction made at each position.
      threshold: the global threshold line.
      starts: bool [N] patch starts (default: the global rule applied to `entropies`).
      title: figure title.
      ax: an existing matplotlib Axes (default: a new figure sized to the text).

    Returns:
      The matplotlib Figure.
    """
    tokens = np.asarray(tokens)
    ent = np.asarray(entropies, np.float64)
    n = len(tokens)
    if starts is None:
        rule = PatchingConfig(threshold=float(threshold))
        starts = np.asarray(entropy_starts(ent[None].astype(np.float32), rule, include_next=False))[0]
    starts = np.asarray(starts, bool)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(max(6.0, 0.18 * n + 2), 40.0), 3.6))
    else:
        fig = ax.figure
    x = np.arange(n)
    # Alternate shading per patch, a line at every patch start.
    patch = np.cumsum(starts) - 1
    for p in range(int(patch.max()) + 1 if n else 0):
        members = x[patch == p]
        if p % 2:
            ax.axvspan(members[0] - 0.5, members[-1] + 0.5, color="0.92", zorder=0)
    for s in x[starts]:
        ax.axvline(s - 0.5, color="tab:red", lw=0.6, alpha=0.5, zorder=1)
    ax.plot(x, ent, color="tab:blue", marker="o", ms=3, lw=1.2, zorder=3, label=r"entropy $H(x_{t+1} \mid x_{\leq t})$")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, zorder=2, label=f"threshold {threshold:.3f}")
    step = max(1, n // 120)  # keep tick labels legible on long texts
    ax.set_xticks(x[::step])
    ax.set_xticklabels([tick_label(int(t)) for t in tokens[::step]], fontsize=7, family="monospace")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylabel("entropy (nats)")
    ax.set_xlabel(f"bytes ({int(starts.sum())} patches, mean {n / max(int(starts.sum()), 1):.2f} bytes)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
    fig.tight_layout()
    return fig


def save_entropy_figure(path: str, *args, **kwargs) -> str:
    """`plot_entropies(*args, **kwargs)` written to `path` (PNG, PDF or SVG by extension; local, `~`
    or `gs://`; missing parent directories are created)."""
    fig = plot_entropies(*args, **kwargs)
    target = paths.resolve(path)
    with paths.staged_dir(os.path.dirname(target) if not paths.is_uri(target) else target.rsplit("/", 1)[0]) as out:
        fig.savefig(os.path.join(out, os.path.basename(target)), dpi=150)
    plt.close(fig)
    return target


def text_entropy_figure(
    path: str, config: EntropyLMConfig, params, tokens: np.ndarray, threshold: float, title: str | None = None
) -> str:
    """The entropy figure of one text: the next-byte entropies of `tokens` (int [N]) under an entropy
    LM (its config and params), patched at `threshold`; written to `path`, which is returned."""
    entropies = np.asarray(entropies_from_logits(EntropyLM(config).apply({"params": params}, tokens[None])))[0]
    return save_entropy_figure(path, tokens, entropies, threshold, title=title)
