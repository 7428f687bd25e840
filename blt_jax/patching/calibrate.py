"""Threshold calibration: the entropy threshold that gives a target mean patch length.

The reference's maintainers tuned the threshold by hand (facebookresearch/blt#106). Here the number of
patches of a sample is a non-increasing function of the threshold (a higher threshold fires fewer
starts; with `max_patch_length`, merging two patches never adds splits), so bisection finds it. The
count is computed with the same jitted rules the pipeline uses, on the documents laid end to end with
document-relative positions (each document patched as if alone, document convention).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.config import PatchingConfig
from blt_jax.errors import InputError
from blt_jax.patching.rules import entropy_starts, split_long_patches

RULES = ("global", "monotonic")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of a threshold search.

    Attributes:
      rule: "global" (H_t > threshold) or "monotonic" (H_t - H_{t-1} > threshold).
      threshold: the threshold found.
      target_mean: the mean patch length asked for.
      achieved_mean: tokens / patches at that threshold.
      patches: number of patches of the sample.
      tokens: number of tokens of the sample (BOS + bytes + EOS per document).
      documents: number of documents of the sample.
      histogram: histogram[n] = number of patches of length n.
      max_patch_length: the split length used, if any.
      at_max_fraction: fraction of patches of exactly max_patch_length (None without it).
    """

    rule: str
    threshold: float
    target_mean: float
    achieved_mean: float
    patches: int
    tokens: int
    documents: int
    histogram: tuple[int, ...]
    max_patch_length: int | None
    at_max_fraction: float | None

    def summary(self) -> str:
        lines = [
            f"rule {self.rule}: threshold {self.threshold:.6f} -> mean patch length {self.achieved_mean:.3f} "
            f"(target {self.target_mean}) over {self.patches:,} patches, {self.tokens:,} tokens, "
            f"{self.documents:,} documents"
        ]
        if self.at_max_fraction is not None:
            lines.append(f"  patches at max_patch_length={self.max_patch_length}: {100 * self.at_max_fraction:.2f}%")
        shown = [(n, c) for n, c in enumerate(self.histogram) if c]
        head = ", ".join(f"{n}:{c}" for n, c in shown[:16])
        lines.append(f"  length histogram (length:count) {head}{' ...' if len(shown) > 16 else ''}")
        return "\n".join(lines)


def _lay_out(entropies: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Documents end to end, padded to a power of two (one compilation per size class)."""
    total = sum(len(e) for e in entropies)
    size = max(16, 1 << int(np.ceil(np.log2(max(total, 1)))))
    ent = np.zeros((1, size), np.float32)
    pos = np.zeros((1, size), np.int32)
    cursor = 0
    for e in entropies:
        ent[0, cursor : cursor + len(e)] = e
        pos[0, cursor : cursor + len(e)] = np.arange(len(e))
        cursor += len(e)
    pos[0, cursor:] = np.arange(size - cursor)  # padding: one more "document", not counted
    return ent, pos, total


def _starts_fn(config: PatchingConfig):
    def starts(ent, pos, theta):
        flags = entropy_starts(ent, config, include_next=False, positions=pos, threshold=theta)
        if config.max_patch_length is not None:
            flags = split_long_patches(flags, config.max_patch_length)
        return flags

    return starts


def _mid_gap(signal: np.ndarray, theta: float) -> float:
    """The middle of the gap between data values around `theta`: the same patches, but as far as
    possible from every value, so small numerical differences in recomputed entropies flip nothing."""
    below, above = signal[signal <= theta], signal[signal > theta]
    if below.size and above.size:
        return float((float(below.max()) + float(above.min())) / 2)
    return theta


def calibrate(
    entropies: Sequence[np.ndarray],
    target_mean: float,
    rule: str = "global",
    max_patch_length: int | None = None,
    iterations: int = 60,
) -> Calibration:
    """Finds the threshold whose mean patch length over `entropies` is closest to `target_mean`.

    Args:
      entropies: per-document entropies (one value per token of BOS + bytes + EOS).
      target_mean: wanted mean patch length in tokens (e.g. 4.5).
      rule: "global" or "monotonic".
      max_patch_length: split longer patches (counts the extra patches).
      iterations: bisection steps.

    Returns:
      The calibration, with the achieved mean and the patch-length histogram.
    """
    if rule not in RULES:
        raise InputError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    if target_mean < 1:
        raise InputError(f"target mean patch length must be >= 1, got {target_mean}")
    docs = [np.asarray(e, np.float32) for e in entropies if len(e)]
    if not docs:
        raise InputError("no entropies to calibrate on")
    config = PatchingConfig(monotonic=rule == "monotonic", max_patch_length=max_patch_length)
    ent, pos, total = _lay_out(docs)
    valid = np.arange(ent.shape[1]) < total
    starts = jax.jit(_starts_fn(config))
    count = jax.jit(lambda e, p, t: jnp.sum(starts(e, p, t)[0] & valid))
    signal = np.concatenate(docs) if rule == "global" else np.concatenate([np.diff(d, prepend=d[0]) for d in docs])
    lo, hi = float(signal.min()) - 1.0, float(signal.max()) + 1.0  # count(lo) is the most patches
    want = total / target_mean
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if int(count(ent, pos, mid)) > want:
            lo = mid
        else:
            hi = mid
    # The answer lies between lo (more patches than wanted) and hi (at most as many): keep the closer.
    n_lo, n_hi = int(count(ent, pos, lo)), int(count(ent, pos, hi))
    theta, n = (lo, n_lo) if abs(total / n_lo - target_mean) < abs(total / n_hi - target_mean) else (hi, n_hi)
    theta = _mid_gap(signal, theta)
    n = int(count(ent, pos, theta))
    flags = np.asarray(starts(ent, pos, theta))[0][:total]
    lengths = np.diff(np.append(np.flatnonzero(flags), total))
    histogram = tuple(int(c) for c in np.bincount(lengths))
    at_max = None if max_patch_length is None else float(np.mean(lengths == max_patch_length))
    return Calibration(
        rule, float(theta), float(target_mean), total / n, n, total, len(docs), histogram, max_patch_length, at_max
    )
