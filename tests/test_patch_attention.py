"""Grouped cross-attention equals dense masked attention with the group masks (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_blt import group_mask, slot_patch_ids

from blt_jax.nn.attention import masked_attention
from blt_jax.nn.patch_attention import bytes_attend_slots, slots_attend_bytes
from blt_jax.nn.patch_ids import decoder_patch_ids, patch_ids_from_lengths

LENGTHS = np.array([[1, 3, 0, 5, 2, 1, 4, 0, 0], [1, 1, 1, 2, 8, 1, 2, 0, 0]], np.int32)  # sum 17 = N + 1
N = 16


def tensors(rows, seed):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(2, rows, 3, 8)) * 2, jnp.float32) for _ in range(3))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_slots_attend_bytes(k):
    num = LENGTHS.shape[1]
    ids = patch_ids_from_lengths(LENGTHS, N)
    q, _, _ = tensors(num * k, 0)
    _, kv, v = tensors(N, 1)
    dense = masked_attention(q, kv, v, group_mask(slot_patch_ids(num, k), ids))
    grouped = slots_attend_bytes(q, kv, v, ids, k)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(dense), atol=2e-6)
    empty = np.asarray(grouped).reshape(2, num, k, 3, 8)[0, [2, 7, 8]]
    assert np.all(empty == 0.0)  # empty patches: exact zeros
    w = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
    g1 = jax.grad(lambda *a: jnp.sum(masked_attention(*a, group_mask(slot_patch_ids(num, k), ids)) * w), (0, 1, 2))(
        q, kv, v
    )
    g2 = jax.grad(lambda *a: jnp.sum(slots_attend_bytes(*a, ids, k) * w), (0, 1, 2))(q, kv, v)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bytes_attend_slots(k):
    num = LENGTHS.shape[1]
    ids = decoder_patch_ids(LENGTHS, N)
    q, _, _ = tensors(N, 3)
    _, kv, v = tensors(num * k, 4)
    dense = masked_attention(q, kv, v, group_mask(ids, slot_patch_ids(num, k)))
    grouped = bytes_attend_slots(q, kv, v, ids, k)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(dense), atol=2e-6)
    w = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32)
    g1 = jax.grad(lambda *a: jnp.sum(masked_attention(*a, group_mask(ids, slot_patch_ids(num, k))) * w), (0, 1, 2))(
        q, kv, v
    )
    g2 = jax.grad(lambda *a: jnp.sum(bytes_attend_slots(*a, ids, k) * w), (0, 1, 2))(q, kv, v)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


def test_out_of_range_ids_attend_nothing():
    q, kv, v = tensors(N, 6)
    ids = jnp.full((2, N), -1, jnp.int32).at[:, 5:].set(2)
    out = np.asarray(bytes_attend_slots(q, kv[:, :8], v[:, :8], ids, 2))
    assert np.all(out[:, :5] == 0.0) and np.abs(out[:, 5:]).max() > 0
