"""Masks built from ids vs NumPy loops over (query, key) pairs."""

import numpy as np
import numpy_blt
import pytest

from blt_jax.nn.latent import patch_document_ids
from blt_jax.nn.masks import causal_mask, document_ids
from blt_jax.nn.patch_ids import decoder_patch_ids, patch_ids_from_lengths
from blt_jax.tokenizer import EOS_ID


def tokens_with_eos(seed, n=30):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, 260, size=(2, n)).astype(np.int32)
    tokens[0, [4, 5, 17]] = EOS_ID  # two EOS in a row: an EOS-only document
    tokens[1, -1] = EOS_ID
    return tokens


def test_document_ids_end_after_each_eos():
    tokens = tokens_with_eos(0)
    docs = np.asarray(document_ids(tokens))
    for row in range(2):
        assert docs[row].tolist() == numpy_blt.documents(tokens[row].tolist())
    assert docs[0, 4] == 0 and docs[0, 5] == 1 and docs[0, 6] == 2


@pytest.mark.parametrize("window", [None, 1, 3, 8, 100])
def test_local_mask(window):
    tokens = tokens_with_eos(1)
    n = tokens.shape[1]
    pos = np.broadcast_to(np.arange(n), tokens.shape)
    docs = document_ids(tokens)
    got = np.asarray(causal_mask(pos, pos, docs, docs, window))
    for row in range(2):
        np.testing.assert_array_equal(got[row], numpy_blt.local_mask(tokens[row].tolist(), window))
    if window == 1:  # only itself
        assert (got == np.eye(n, dtype=bool)[None]).all()


def test_latent_mask_splits_documents_after_eos_patches():
    tokens = tokens_with_eos(2)
    lengths = np.array([[1, 3, 2, 4, 5, 1, 6, 9, 0, 0], [1, 5, 5, 5, 5, 5, 5, 0, 0, 0]], np.int32)
    assert (lengths.sum(1) == tokens.shape[1] + 1).all()
    num = lengths.shape[1]
    pid = patch_ids_from_lengths(lengths, tokens.shape[1])
    pdocs = patch_document_ids(tokens, pid, num)
    pos = np.broadcast_to(np.arange(num), (2, num))
    got = np.asarray(causal_mask(pos, pos, pdocs, pdocs))
    for row in range(2):
        np.testing.assert_array_equal(got[row], numpy_blt.latent_mask(tokens[row].tolist(), lengths[row].tolist()))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_cross_masks(k):
    lengths = np.array([[1, 2, 0, 4, 3, 1, 0, 0]], np.int32)
    n = int(lengths.sum()) - 1
    num = lengths.shape[1]
    slots = numpy_blt.slot_patch_ids(num, k)
    enc = numpy_blt.group_mask(slots, patch_ids_from_lengths(lengths, n))[0]
    dec = numpy_blt.group_mask(decoder_patch_ids(lengths, n), slots)[0]
    p = numpy_blt.patch_ids(lengths[0].tolist(), n)
    q = numpy_blt.patch_ids(lengths[0, 1:].tolist(), n)
    for r in range(num * k):
        for i in range(n):
            assert enc[r, i] == (p[i] == r // k)
            assert dec[i, r] == (q[i] == r // k)
    # Every byte is in exactly one patch (k slots); the empty patch 2 has no bytes at all.
    assert (enc.sum(0) == k).all() and not enc[2 * k : 3 * k].any()
    assert (dec.sum(1) == k).all()
