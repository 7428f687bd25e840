"""Entropy patching rules vs the reference's stored figure and a slow re-statement of each rule."""

import json
import os

import numpy as np
import pytest

from blt_jax.config import PatchingConfig
from blt_jax.patching.ids import lengths_from_starts
from blt_jax.patching.rules import byte_starts, entropy_starts
from blt_jax.tokenizer import render


def load_figure(fixtures_dir):
    with open(os.path.join(fixtures_dir, "entropy_figure.json")) as f:
        raw = json.load(f)
    frame = json.loads(raw["dataframe_json"])
    order = sorted(frame["position"], key=int)
    column = lambda name: [frame[name][k] for k in order]  # noqa: E731
    return raw, np.array(column("token_ids")), np.array(column("entropies")), np.array(column("start"))


def test_reproduces_the_reference_entropy_figure(fixtures_dir):
    raw, ids, entropies, start = load_figure(fixtures_dir)
    assert len(ids) == 81 and ids[0] == 1 and ids[-1] == 2
    config = PatchingConfig(threshold=raw["threshold"])
    # The figure's flags cover the N tokens (document convention).
    flags = np.asarray(entropy_starts(entropies[None].astype(np.float32), config, include_next=False))[0]
    assert flags.astype(int).tolist() == start.tolist()
    lengths = np.asarray(lengths_from_starts(flags[None], 81))[0]
    lengths = lengths[lengths > 0].tolist()
    assert lengths == [1, 1, 1, 1, 1, 15, 3, 3, 1, 1, 3, 12, 1, 1, 1, 1, 1, 5, 5, 1, 2, 1, 19]
    bounds = np.cumsum([0] + lengths)
    pieces = [render(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert pieces[5] == "erys Targaryen " and "of Thrones, " in pieces
    assert pieces[-1] == "eorge R.R. Martin.</s>" and render(ids) == "<s>" + raw["text"] + "</s>"


def slow_rule(entropies, mode, threshold, threshold_add=None):
    """Restatement of blt_spec.md 4.3, one position at a time (next-token convention)."""
    n = len(entropies)
    starts = [False] * (n + 1)
    for pos in range(n + 1):
        t = pos - 1  # the decision for pos uses H_{pos-1}
        if mode == "global":
            starts[pos] = pos < 2 or entropies[t] > threshold
        elif mode == "monotonic":
            starts[pos] = pos < 3 or entropies[t] - entropies[t - 1] > threshold
        else:
            starts[pos] = pos < 3 or (pos > 3 and entropies[t] > threshold and entropies[t] - entropies[t - 1] > threshold_add)
    return starts


@pytest.mark.parametrize("mode", ["global", "monotonic", "combined"])
def test_rules_match_slow_statement(mode):
    rng = np.random.default_rng(1)
    entropies = rng.gamma(2.0, 0.8, size=(3, 50)).astype(np.float32)
    config = {
        "global": PatchingConfig(threshold=1.3),
        "monotonic": PatchingConfig(threshold=0.2, monotonic=True),
        "combined": PatchingConfig(threshold=1.3, threshold_add=0.1),
    }[mode]
    got = np.asarray(entropy_starts(entropies, config))
    for row in range(3):
        want = slow_rule(entropies[row].tolist(), mode, config.threshold, config.threshold_add)
        assert got[row].tolist() == want
    assert got.shape == (3, 51) and got[:, :2].all()
    document = np.asarray(entropy_starts(entropies, config, include_next=False))
    assert (document == got[:, :50]).all()


def test_byte_rule_lengths_sum_to_n_plus_one():
    lengths = np.asarray(lengths_from_starts(byte_starts(2, 9), 10))
    assert (lengths == 1).all() and (lengths.sum(1) == 10).all()
