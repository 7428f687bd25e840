"""Entropy patching rules vs the reference's stored figure and a slow re-statement of each rule."""

import json
import os

import jax
import numpy as np
import pytest

from blt_jax.config import PatchingConfig
from blt_jax.nn.patch_ids import lengths_from_starts
from blt_jax.patching.rules import (
    byte_starts,
    entropy_starts,
    patch_starts,
    space_starts,
    split_long_patches,
    static_starts,
)
from blt_jax.tokenizer import encode, render


def load_figure(fixtures_dir):
    with open(os.path.join(fixtures_dir, "entropy_figure.json")) as f:
        raw = json.load(f)
    frame = json.loads(raw["dataframe_json"])
    order = sorted(frame["position"], key=int)
    column = lambda name: [frame[name][k] for k in order]
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
            starts[pos] = pos < 3 or (
                pos > 3 and entropies[t] > threshold and entropies[t] - entropies[t - 1] > threshold_add
            )
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


def slow_space(tokens):
    """blt_spec.md 4.4 restated per byte (next-token convention)."""

    def space_like(t):
        if t < 4:
            return True
        b = t - 4
        alnum = (48 <= b <= 57) or (65 <= b <= 90) or (97 <= b <= 122)
        continuation = 0x80 <= b < 0xC0
        return not alnum and not continuation

    n = len(tokens)
    starts = [True, True] + [False] * (n - 1)
    for i in range(1, n):
        first_of_run = space_like(tokens[i]) and not space_like(tokens[i - 1])
        if first_of_run or tokens[i] < 4:
            starts[i + 1] = True
    return starts


def test_space_rule_matches_slow_statement():
    text = "Hi  there,\tworld!! ÉCOLE — naïve café...\n\nend"
    ids = np.concatenate([[1], np.frombuffer(text.encode(), np.uint8).astype(np.int32) + 4, [2, 1, 50 + 4]])
    rng_ids = np.random.default_rng(2).integers(0, 260, size=60).astype(np.int32)
    for row in (ids, rng_ids):
        got = np.asarray(space_starts(row[None]))[0]
        assert got.tolist() == slow_space(row.tolist())
        doc = np.asarray(space_starts(row[None], include_next=False))[0]
        assert doc.tolist() == slow_space(row.tolist())[: len(row)]


def test_space_rule_example():
    ids = encode("a  bc d", add_eos=False)  # <s> a ' ' ' ' b c ' ' d
    lengths = np.asarray(lengths_from_starts(space_starts(ids[None]), len(ids) + 1))[0]
    bounds = np.cumsum([0] + [int(x) for x in lengths if x])
    pieces = [render(np.append(ids, 0)[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    # Only the first space of a run ends a patch; the last patch holds the next-byte slot (id 0).
    assert pieces == ["<s>", "a ", " bc ", "d<boe>"]


@pytest.mark.parametrize("include_next", [True, False])
def test_static_rule(include_next):
    starts = np.asarray(static_starts(2, 10, 4, include_next))
    lengths = np.asarray(lengths_from_starts(starts, 12))
    total = 11 if include_next else 10
    expected = [1, 4, 4, total - 9]
    assert lengths[0][lengths[0] > 0].tolist() == expected and (lengths[0] == lengths[1]).all()


def slow_split(lengths, m):
    out = []
    for n in lengths:
        while n > m:
            out.append(m)
            n -= m
        out.append(n)
    return out


@pytest.mark.parametrize("m", [1, 2, 3, 7])
def test_max_patch_length_splits_like_the_reference(m):
    rng = np.random.default_rng(m)
    starts = rng.random((3, 40)) < 0.15
    starts[:, :2] = True
    split = np.asarray(split_long_patches(starts, m))
    for row in range(3):
        natural = np.asarray(lengths_from_starts(starts[row : row + 1], 40))[0]
        natural = natural[natural > 0].tolist()
        got = np.asarray(lengths_from_starts(split[row : row + 1], 40))[0]
        assert got[got > 0].tolist() == slow_split(natural, m)
        assert max(got) <= m


@pytest.mark.parametrize("mode", ["entropy", "space", "static", "byte"])
@pytest.mark.parametrize("include_next", [True, False])
def test_dispatch_conventions_and_budget(mode, include_next):
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260, size=(2, 33)).astype(np.int32)
    tokens[:, 0] = 1
    entropies = rng.gamma(2.0, 0.8, size=(2, 33)).astype(np.float32)
    config = PatchingConfig(mode=mode, threshold=1.5, static_size=5, max_patch_length=6)
    fn = jax.jit(lambda t, e: lengths_from_starts(patch_starts(config, t, e, include_next), 34))
    lengths = np.asarray(fn(tokens, entropies))
    total = 34 if include_next else 33
    assert lengths.shape == (2, 34) and (lengths.sum(1) == total).all()
    assert (lengths[:, 0] == 1).all() and lengths.max() <= 6
    for row in lengths:  # trailing zeros only
        nz = np.flatnonzero(row)
        assert (row[: nz[-1] + 1] > 0).all()
    # Per row, with no dependence on the other rows of the batch.
    alone = np.asarray(fn(tokens[:1], entropies[:1]))
    assert (alone[0] == lengths[0]).all()


def test_entropy_mode_needs_entropies():
    with pytest.raises(ValueError, match="needs entropies"):
        patch_starts(PatchingConfig(), np.ones((1, 3), np.int32))


@pytest.mark.parametrize(
    "config",
    [
        PatchingConfig(threshold=1.4),
        PatchingConfig(threshold=0.3, monotonic=True),
        PatchingConfig(threshold=1.2, threshold_add=0.05),
        PatchingConfig(mode="space"),
        PatchingConfig(mode="static", static_size=3),
        PatchingConfig(threshold=1.0, max_patch_length=4),
    ],
)
def test_stream_of_documents_equals_each_document_alone(config):
    """Rows that concatenate documents (doc-relative positions) patch each document as if alone."""
    rng = np.random.default_rng(4)
    docs = [encode(bytes(rng.integers(32, 127, size=n).astype(np.uint8))) for n in (0, 1, 5, 17, 40)]
    ents = [rng.gamma(2.0, 0.8, size=len(d)).astype(np.float32) for d in docs]
    stream = np.concatenate(docs)[None]
    positions = np.concatenate([np.arange(len(d)) for d in docs])[None]
    flags = np.asarray(patch_starts(config, stream, np.concatenate(ents)[None], False, positions))[0]
    offset = 0
    for d, e in zip(docs, ents):
        alone = np.asarray(patch_starts(config, d[None], e[None], include_next=False))[0]
        assert flags[offset : offset + len(d)].tolist() == alone.tolist()
        offset += len(d)


@pytest.mark.parametrize(
    "config",
    [
        PatchingConfig(threshold=1.4),
        PatchingConfig(threshold=0.3, monotonic=True),
        PatchingConfig(threshold=1.2, threshold_add=0.05, max_patch_length=5),
        PatchingConfig(mode="space", max_patch_length=3),
        PatchingConfig(mode="static", static_size=3),
        PatchingConfig(mode="byte"),
    ],
)
@pytest.mark.parametrize("include_next", [True, False])
def test_numpy_and_jax_paths_agree(config, include_next):
    """The host pipeline (NumPy) and jitted code (JAX) run the same rule code."""
    rng = np.random.default_rng(9)
    tokens = rng.integers(0, 260, size=(3, 45)).astype(np.int32)
    entropies = rng.gamma(2.0, 0.8, size=(3, 45)).astype(np.float32)
    positions = np.concatenate([np.arange(20), np.arange(25)])[None].repeat(3, 0)
    host = patch_starts(config, tokens, entropies, include_next, positions)
    assert isinstance(host, np.ndarray)
    device = jax.jit(lambda t, e, p: patch_starts(config, t, e, include_next, p))(tokens, entropies, positions)
    np.testing.assert_array_equal(host, np.asarray(device))
