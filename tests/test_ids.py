"""Patch ids, decoder ids and length/start conversions vs the reference's definitions."""

import jax
import numpy as np
import pytest

from blt_jax.nn.patch_ids import (
    decoder_patch_ids,
    lengths_from_starts,
    patch_ids_from_lengths,
    starts_from_lengths,
)
from blt_jax.tokenizer import BOS_ID, EOS_ID


def slow_patch_ids(lengths, n):
    """The reference's definition: p(i) = #{j : cum[j] <= i} - 1, cum = [0, l0, l0+l1, ...]."""
    cum = np.concatenate([[0], np.cumsum(lengths)])
    return np.array([(cum <= i).sum() - 1 for i in range(n)])


def random_lengths(rng, n, num_patches, empty_inside=0):
    """Valid next-token lengths: first patch 1, sum n + 1, `empty_inside` zero-length patches among
    the others, trailing zeros up to `num_patches`."""
    count = rng.integers(1, num_patches - 1 - empty_inside)
    cuts = np.sort(rng.choice(np.arange(2, n + 1), size=min(count, n - 1), replace=False))
    lengths = list(np.diff(np.concatenate([[0, 1], cuts, [n + 1]])))
    for _ in range(empty_inside):
        lengths.insert(int(rng.integers(1, len(lengths) + 1)), 0)
    return np.array(lengths + [0] * (num_patches - len(lengths)), np.int64)


def test_worked_example_from_the_reference():
    # blt_spec.md 1.2 (docstring of get_blt_input).
    x = [3, 4, 5, 6, 7, EOS_ID, BOS_ID, 8, 9, 10, EOS_ID, BOS_ID, 11, 12]
    lengths = np.array([[1, 1, 3, 2, 2, 1, 2, 2, 1]])
    assert lengths.sum() == len(x) + 1
    p = np.asarray(patch_ids_from_lengths(lengths, len(x)))[0]
    assert p.tolist() == [0, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7]
    q = np.asarray(decoder_patch_ids(lengths, len(x)))[0]
    # Decoder groups [3] [4,5,6] [7,eos] [bos,8] [9] [10,eos] [bos,11] [12] read patches 0..7.
    assert q.tolist() == [0, 1, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7]
    p_next = slow_patch_ids(lengths[0], len(x) + 1)
    assert q.tolist() == (p_next[1:] - 1).tolist()  # q(i) = p(i + 1) - 1


@pytest.mark.parametrize("seed", range(6))
def test_random_lengths_match_slow_definition(seed):
    rng = np.random.default_rng(seed)
    n, num_patches = 37, 24
    lengths = np.stack([random_lengths(rng, n, num_patches, empty_inside=e) for e in (0, 1, 3)])
    assert (lengths.sum(1) == n + 1).all() and (lengths[:, 0] == 1).all()
    p = np.asarray(jax.jit(patch_ids_from_lengths, static_argnums=1)(lengths, n))
    q = np.asarray(jax.jit(decoder_patch_ids, static_argnums=1)(lengths, n))
    for row in range(3):
        assert p[row].tolist() == slow_patch_ids(lengths[row], n).tolist()
        assert q[row].tolist() == (slow_patch_ids(lengths[row], n + 1)[1:] - 1).tolist()


def test_empty_patches_are_skipped_and_overflow_gets_id_P():
    lengths = np.array([[1, 0, 2, 0, 0]])
    assert np.asarray(patch_ids_from_lengths(lengths, 5))[0].tolist() == [0, 2, 2, 5, 5]


def test_lengths_from_starts_round_trip():
    rng = np.random.default_rng(3)
    starts = rng.random((4, 30)) < 0.3
    starts[:, 0] = True
    lengths = np.asarray(lengths_from_starts(starts, 31))
    assert (lengths.sum(1) == 30).all()
    assert (lengths > 0).sum(1).tolist() == starts.sum(1).tolist()  # one patch per start
    for row in range(4):
        nz = lengths[row][lengths[row] > 0]
        assert len(nz) == starts[row].sum() and (lengths[row][len(nz) :] == 0).all()
        assert np.flatnonzero(starts[row]).tolist() == np.concatenate([[0], np.cumsum(nz)[:-1]]).tolist()
    assert (np.asarray(starts_from_lengths(lengths, 30)) == starts).all()


def test_lengths_from_starts_merges_overflow_into_last_patch():
    starts = np.ones((1, 6), bool)
    assert np.asarray(lengths_from_starts(starts, 4))[0].tolist() == [1, 1, 1, 3]
