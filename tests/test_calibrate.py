"""Threshold calibration vs a brute-force search, and the entropy figure."""

import json
import os

import numpy as np
import pytest

from blt_jax.patching.calibrate import calibrate
from blt_jax.patching.plot import plot_entropies, save_entropy_figure


def slow_lengths(entropies, theta, rule, max_len=None):
    """Patch lengths of one document (document convention), restated position by position."""
    n = len(entropies)
    starts = []
    for pos in range(n):
        t = pos - 1
        if rule == "global":
            fire = pos < 2 or entropies[t] > theta
        else:
            fire = pos < 3 or entropies[t] - entropies[t - 1] > theta
        if fire:
            starts.append(pos)
    lengths = list(np.diff(starts + [n]))
    if max_len:
        split = []
        for length in lengths:
            while length > max_len:
                split.append(max_len)
                length -= max_len
            split.append(length)
        lengths = split
    return lengths


def documents(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.gamma(2.0, 0.7, size=n).astype(np.float16).astype(np.float32) for n in (1, 2, 7, 60, 33, 250, 90)]


@pytest.mark.parametrize("rule", ["global", "monotonic"])
@pytest.mark.parametrize("target", [2.0, 4.5, 9.0])
def test_matches_brute_force(rule, target):
    docs = documents()
    total = sum(len(d) for d in docs)
    signal = np.concatenate(docs) if rule == "global" else np.concatenate([np.diff(d, prepend=d[0]) for d in docs])
    values = np.unique(signal)
    candidates = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    means = [total / sum(len(slow_lengths(d, c, rule)) for d in docs) for c in candidates]
    best = min(means, key=lambda m: abs(m - target))

    result = calibrate(docs, target, rule)
    assert result.achieved_mean == pytest.approx(best, abs=1e-9)
    lengths = [n for d in docs for n in slow_lengths(d, result.threshold, rule)]
    assert result.patches == len(lengths) and result.tokens == total and result.documents == len(docs)
    assert result.histogram == tuple(np.bincount(lengths))
    # The threshold sits mid-gap: nudging it by 1e-4 changes no patch.
    for nudge in (-1e-4, 1e-4):
        assert sum(len(slow_lengths(d, result.threshold + nudge, rule)) for d in docs) == result.patches


def test_max_patch_length_report():
    docs = documents(1)
    result = calibrate(docs, 6.0, "global", max_patch_length=5)
    lengths = [n for d in docs for n in slow_lengths(d, result.threshold, "global", 5)]
    assert max(lengths) <= 5 and result.patches == len(lengths)
    assert result.at_max_fraction == pytest.approx(np.mean(np.array(lengths) == 5))
    assert "patches at max_patch_length=5" in result.summary()


def test_unreachable_target_gives_the_closest():
    docs = documents(2)
    result = calibrate(docs, 1000.0)  # more than the forced starts allow
    forced = sum(min(len(d), 2) for d in docs)
    assert result.patches == forced


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown rule"):
        calibrate(documents(), 4.5, "median")
    with pytest.raises(ValueError, match=">= 1"):
        calibrate(documents(), 0.5)
    with pytest.raises(ValueError, match="no entropies"):
        calibrate([np.zeros(0)], 4.5)


def test_entropy_figure_of_the_reference_fixture(fixtures_dir, tmp_path):
    with open(os.path.join(fixtures_dir, "entropy_figure.json")) as f:
        raw = json.load(f)
    frame = json.loads(raw["dataframe_json"])
    order = sorted(frame["position"], key=int)
    ids = [frame["token_ids"][k] for k in order]
    ent = [frame["entropies"][k] for k in order]
    fig = plot_entropies(ids, ent, raw["threshold"], title=raw["text"])
    ax = fig.axes[0]
    assert "23 patches" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:3] == ["<s>", "D", "a"] and labels[9] == "_" and labels[-1] == "</s>"
    path = save_entropy_figure(str(tmp_path / "fig.png"), ids, ent, raw["threshold"])
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 20_000
