"""Banded sliding-window attention equals dense masked attention (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.nn.attention import masked_attention
from blt_jax.nn.local_attention import _MAX_UNROLL, _split_queries, banded_attention, default_chunk
from blt_jax.nn.masks import CausalSpec, document_ids


def inputs(batch, t_len, s_len, seed=0, heads=3, dim=8):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, t_len, heads, dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(batch, s_len, heads, dim)) * 2, jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, s_len, heads, dim)), jnp.float32)
    tokens = rng.integers(3, 260, size=(batch, s_len))
    tokens[tokens < 12] = 2  # EOS now and then: several documents per row
    docs = np.asarray(document_ids(tokens))
    pos = np.zeros_like(docs)
    for b in range(batch):  # positions restart in each document (contiguous within one)
        for i in range(1, s_len):
            pos[b, i] = 0 if docs[b, i] != docs[b, i - 1] else pos[b, i - 1] + 1
    return q, k, v, pos, docs


@pytest.mark.parametrize("window,block", [(1, 32), (3, 32), (16, 32), (40, 32), (100, 64)])
@pytest.mark.parametrize("t_len,s_len", [(150, 150), (97, 160)])
def test_equals_dense(window, block, t_len, s_len):
    q, k, v, pos, docs = inputs(2, t_len, s_len, seed=window)
    spec = CausalSpec(pos[:, -t_len:], docs[:, -t_len:], pos, docs, window)
    dense = masked_attention(q, k, v, spec.dense())
    banded = jax.jit(banded_attention, static_argnums=4)(q, k, v, spec, block)
    np.testing.assert_allclose(np.asarray(banded), np.asarray(dense), atol=2e-6, rtol=0)


def test_gradients_equal_dense():
    q, k, v, pos, docs = inputs(2, 130, 130, seed=3)
    spec = CausalSpec.self_attention(pos, docs, 24)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    loss_dense = lambda q, k, v: jnp.sum(masked_attention(q, k, v, spec.dense()) * weights)
    loss_band = lambda q, k, v: jnp.sum(banded_attention(q, k, v, spec, 32) * weights)
    for a, b in zip(jax.grad(loss_dense, (0, 1, 2))(q, k, v), jax.jit(jax.grad(loss_band, (0, 1, 2)))(q, k, v)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)


def test_rows_without_keys_are_zero():
    q, k, v, pos, docs = inputs(1, 64, 64)
    q_docs = docs.copy()
    q_docs[0, 10:20] = 999  # these queries match no key's document
    spec = CausalSpec(pos, q_docs, pos, docs, 8)
    out = np.asarray(banded_attention(q, k, v, spec, 32))
    assert np.all(out[0, 10:20] == 0.0) and np.abs(out[0, :10]).max() > 0


def test_default_chunk():
    assert [default_chunk(w) for w in (1, 16, 64, 100, 200, 512, 4096)] == [32, 32, 32, 32, 64, 128, 1024]


def test_long_rows_loop_over_chunks_and_equal_dense():
    """700 queries after 5 earlier keys, window 16, chunks of 32: one short chunk at the start, 20
    full chunks in a loop (more than it unrolls at once, so the loop and its remainder both run), and a
    short chunk at the end."""
    before, _, n_loop, after = _split_queries(700, 705, 16, 32)
    assert len(before) == 1 and n_loop > _MAX_UNROLL and n_loop % _MAX_UNROLL and len(after) == 1
    q, k, v, pos, docs = inputs(2, 700, 705, seed=5)
    spec = CausalSpec(pos[:, -700:], docs[:, -700:], pos, docs, 16)
    dense = masked_attention(q, k, v, spec.dense())
    banded = jax.jit(banded_attention, static_argnums=4)(q, k, v, spec, 32)
    np.testing.assert_allclose(np.asarray(banded), np.asarray(dense), atol=2e-6, rtol=0)
