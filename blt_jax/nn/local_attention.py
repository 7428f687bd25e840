"""Sliding-window attention that scores, for each chunk of queries, only the keys its window reaches.

With window W, a query at index i sees keys (i - W, i]. Queries are cut into chunks of C; chunk
[a, a + C) needs the contiguous keys (a - W, a + C): C + W - 1 of them, fewer at the start of a row,
where the range is cut at key 0. The work is about T * (C + W - 1) scores instead of T * S, and none are
spent on padding. Chunks whose key range is whole share one shape and run in a loop; the few at the
start (at most about W / C, each shorter) and a short last one are unrolled with their own shapes.

One head (and a group of rows) at a time runs inside a scan, and one chunk at a time inside that: a
chunk's scores, C x (C + W - 1), stay within a core's L2 cache on CPUs, which is what makes this faster
than scoring a head's whole band at once; on TPUs it bounds temporary memory. Masks come from ids
(positions, documents) for each chunk; nothing of size [T, S] is ever materialised. Results equal dense
masked attention (`attention.masked_attention`) up to float rounding; rows with no visible key are
exactly zero.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.nn.masks import CausalSpec
from blt_jax.nn.rows import merge_rows, scan_rows, split_rows
from blt_jax.nn.softmax import masked_exp

# Scores of one chunk for one scan step's rows: about one core's L2 cache. In the entropy pass (8 x 1024
# bytes, W 512) chunks of 128 took 15% less time than the earlier bands of 256 scored for a whole head.
_TILE_BYTES = 1 << 20
# Looped chunks per while-loop iteration; rows of up to W + 16 C queries are unrolled completely.
_MAX_UNROLL = 16


def default_chunk(window: int) -> int:
    """Queries per chunk: a quarter of the window rounded up to a power of two, at least 32.

    A quarter keeps the unrolled chunks at the start of a row to about four, whatever the window.
    """
    return int(max(32, 1 << max(0, (-(-window // 4) - 1).bit_length())))


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Queries [start, stop) and the keys [key_start, key_stop) their windows reach (static)."""

    start: int
    stop: int
    key_start: int
    key_stop: int


def _split_queries(t_len: int, s_len: int, window: int, chunk: int) -> tuple[list[_Chunk], int, int, list[_Chunk]]:
    """Splits the queries into chunks: (unrolled chunks before the loop, first looped query, number of
    looped chunks, unrolled chunks after it). Looped chunks are full: C queries, C + W - 1 keys."""
    base = s_len - t_len  # key index of the first query
    chunks = [
        _Chunk(a, min(t_len, a + chunk), max(0, base + a - window + 1), base + min(t_len, a + chunk))
        for a in range(0, t_len, chunk)
    ]
    full = [c.stop - c.start == chunk and c.key_stop - c.key_start == chunk + window - 1 for c in chunks]
    if not any(full):
        return chunks, 0, 0, []
    first = full.index(True)
    n_full = sum(full)  # full chunks are contiguous: the key range only grows until it is whole
    return chunks[:first], chunks[first].start, n_full, chunks[first + n_full :]


def _chunk_mask(q_pos, q_doc, k_pos, k_doc, window: int) -> jax.Array:
    """[..., C] query ids and [..., L] key ids -> bool [..., C, L] (causal, window, same document)."""
    qp, kp = q_pos[..., :, None], k_pos[..., None, :]
    return (kp <= qp) & (kp > qp - window) & (k_doc[..., None, :] == q_doc[..., :, None])


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of one chunk: q [R, C, K], k/v [R, L, K] (q pre-scaled), mask [R, C, L]."""
    s = jnp.einsum("rqk,rsk->rqs", q, k, preferred_element_type=jnp.float32)
    # Normalised after the product with the values: C x K divisions instead of C x L.
    p, normaliser = masked_exp(s, mask)
    out = jnp.einsum("rqs,rsk->rqk", p.astype(v.dtype), v)
    return out / normaliser.astype(out.dtype)


def banded_attention(q: jax.Array, k: jax.Array, v: jax.Array, spec: CausalSpec, chunk: int | None = None) -> jax.Array:
    """Windowed causal attention over the keys each chunk of queries can see.

    Args:
      q: [B, T, H, K] queries (the last T of the S key positions).
      k: [B, S, H, K] keys (RoPE applied).
      v: [B, S, H, K] values.
      spec: ids of queries and keys; `spec.window` must be set.
      chunk: queries per chunk C (default `default_chunk(window)`).

    Returns:
      [B, T, H, K]; rows with no visible key are exactly zero.
    """
    window = spec.window
    if window is None:
        raise ValueError("banded_attention needs a window")
    batch, t_len, heads, dim = q.shape
    chunk = chunk or default_chunk(window)
    before, loop_start, n_loop, after = _split_queries(t_len, k.shape[1], window, chunk)
    span = chunk + window - 1  # keys of a looped chunk
    key_offset = k.shape[1] - t_len - window + 1  # first key of the chunk whose queries start at 0

    # Rows per scan step: as many as keep one chunk's scores within the tile budget, and at least one
    # per batch shard of the mesh (each device then scans its own rows).
    rows = scan_rows(batch, max(1, _TILE_BYTES // (chunk * span * 4)))
    groups = batch // rows

    # Masks once for all heads: [groups, rows, C_i, L_i] per unrolled chunk (those before the loop first).
    masks = [
        split_rows(
            _chunk_mask(
                spec.q_pos[:, c.start : c.stop],
                spec.q_doc[:, c.start : c.stop],
                spec.k_pos[:, c.key_start : c.key_stop],
                spec.k_doc[:, c.key_start : c.key_stop],
                window,
            ),
            rows,
        )
        for c in before + after
    ]
    if n_loop:  # the looped chunks' query ids reshaped, their key ids gathered by a static index table
        key_index = jnp.asarray((loop_start + key_offset + chunk * np.arange(n_loop))[:, None] + np.arange(span))
        q_pos, q_doc = (
            x[:, loop_start : loop_start + n_loop * chunk].reshape(batch, n_loop, chunk)
            for x in (spec.q_pos, spec.q_doc)
        )
        k_pos, k_doc = (jnp.take(x, key_index, axis=1) for x in (spec.k_pos, spec.k_doc))  # [B, n_loop, L]
        mask = _chunk_mask(q_pos, q_doc, k_pos, k_doc, window)  # [B, n_loop, C, L]
        loop_masks = jnp.swapaxes(split_rows(mask, rows), 1, 2)  # [groups, n_loop, rows, C, L]

    qh = jnp.moveaxis(q * (dim**-0.5), 2, 0)  # [H, B, T, K]
    kh, vh = jnp.moveaxis(k, 2, 0), jnp.moveaxis(v, 2, 0)  # [H, B, S, K]

    # The scan runs over (head, g) and each step takes rows r = 0..rows-1 of b = r * groups + g, so a
    # batch sharded over the mesh stays sharded.
    def split(x):  # [H, B, ...] -> [H * groups, rows, ...]
        x = split_rows(x, rows, axis=1)
        return x.reshape(heads * groups, rows, *x.shape[3:])

    def step(_, xs):
        index, qg, kg, vg = xs  # qg [rows, T, K], kg/vg [rows, S, K]
        g = index % groups

        def unrolled_out(c: _Chunk, m: jax.Array) -> jax.Array:  # [rows, C_i, K]
            return _attend(
                qg[:, c.start : c.stop], kg[:, c.key_start : c.key_stop], vg[:, c.key_start : c.key_stop], m[g]
            )

        parts = [unrolled_out(c, m) for c, m in zip(before, masks)]
        if n_loop:

            def one(args):
                i, m = args
                a = loop_start + i * chunk
                kc, vc = (jax.lax.dynamic_slice_in_dim(x, a + key_offset, span, axis=1) for x in (kg, vg))
                return _attend(jax.lax.dynamic_slice_in_dim(qg, a, chunk, axis=1), kc, vc, m)

            # Unrolled (up to _MAX_UNROLL chunks per loop iteration): each iteration of an XLA:CPU
            # while loop costs more than a chunk's arithmetic (looped, the entropy pass took 1.22x).
            _, looped = jax.lax.scan(
                lambda carry, xs: (carry, one(xs)),
                None,
                (jnp.arange(n_loop), loop_masks[g]),
                unroll=min(n_loop, _MAX_UNROLL),
            )  # [n_loop, rows, C, K]
            parts.append(jnp.swapaxes(looped, 0, 1).reshape(rows, n_loop * chunk, dim))
        parts += [unrolled_out(c, m) for c, m in zip(after, masks[len(before) :])]
        return None, jnp.concatenate(parts, axis=1)

    steps = jnp.arange(heads * groups)
    # Rematerialised: the backward pass recomputes each tile instead of storing every tile's scores.
    _, out = jax.lax.scan(jax.checkpoint(step), None, (steps, split(qh), split(kh), split(vh)))
    out = merge_rows(out.reshape(heads, groups, rows, t_len, dim), axis=1)
    return jnp.moveaxis(out, 0, 2)


def use_banded(spec: CausalSpec, t_len: int) -> bool:
    """Chunked attention pays off once the queries span a few chunks beyond the window."""
    if not spec.ordered or spec.window is None:
        return False
    return t_len >= 2 * default_chunk(spec.window) and t_len > spec.window // 2
