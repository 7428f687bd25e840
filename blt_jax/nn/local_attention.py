"""Sliding-window attention that computes only the band of keys the window allows.

With window W, a query at index i sees keys (i - W, i]. Queries are cut into blocks of `block`
positions; block b needs the keys of ceil((W - 1 + block) / block) key blocks ending at its own, so the
work is T * (W - 1 + block) scores instead of T * S. The scores of one head (and a group of rows) at a
time are computed inside a scan: the tiles stay small, which on CPUs avoids re-faulting large fresh
buffers on every call and on TPUs bounds temporary memory. Masks come from ids (positions, documents)
inside each tile; nothing of size [T, S] is ever materialised. Results equal dense masked attention
(`attention.masked_attention`) up to float rounding; rows with no visible key are exactly zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blt_jax.nn.masks import CausalSpec
from blt_jax.parallel import merge_rows, scan_rows, split_rows

_MASKED_SCORE = -1e30
_PAD_POS = -(1 << 30)  # padded keys: farther than any window from every query
_TILE_BYTES = 8 << 20  # per-iteration score tile budget


def default_block(window: int) -> int:
    """Query block size: about half the window, between 32 and 256."""
    return int(min(256, max(32, 1 << max(0, (window // 2 - 1).bit_length()))))


def _pad_axis(x: jax.Array, axis: int, before: int, after: int, value=0) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, constant_values=value)


def banded_attention(q: jax.Array, k: jax.Array, v: jax.Array, spec: CausalSpec, block: int | None = None) -> jax.Array:
    """Windowed causal attention over the band of keys each query block can see.

    Args:
      q: [B, T, H, K] queries (the last T of the S key positions).
      k: [B, S, H, K] keys (RoPE applied).
      v: [B, S, H, K] values.
      spec: ids of queries and keys; `spec.window` must be set.
      block: query block size (default `default_block(window)`).

    Returns:
      [B, T, H, K]; rows with no visible key are exactly zero.
    """
    window = spec.window
    if window is None:
        raise ValueError("banded_attention needs a window")
    batch, t_len, heads, dim = q.shape
    s_len = k.shape[1]
    block = block or default_block(window)
    n_kb = -(-(window - 1 + block) // block)  # key blocks in one band
    span = n_kb * block
    n_qb = -(-t_len // block)
    t_pad = n_qb * block - t_len
    base = s_len - t_len  # key index of the first query
    front = max(0, (n_kb - 1) * block - base)
    front += (-(front + base)) % block  # align query blocks with key blocks
    first = (front + base) // block - (n_kb - 1)  # first key block of query block 0's band

    # Layout [H, B, blocks, block, K]; padded queries / keys get ids that match nothing.
    qh = jnp.moveaxis(_pad_axis(q * (dim**-0.5), 1, 0, t_pad), 2, 0).reshape(heads, batch, n_qb, block, dim)
    kh = jnp.moveaxis(_pad_axis(k, 1, front, t_pad), 2, 0)
    vh = jnp.moveaxis(_pad_axis(v, 1, front, t_pad), 2, 0)
    n_blocks = kh.shape[2] // block
    kh = kh.reshape(heads, batch, n_blocks, block, dim)
    vh = vh.reshape(heads, batch, n_blocks, block, dim)
    q_pos = _pad_axis(spec.q_pos, 1, 0, t_pad).reshape(batch, n_qb, block)
    q_doc = _pad_axis(spec.q_doc, 1, 0, t_pad, -4).reshape(batch, n_qb, block)
    k_pos = _pad_axis(spec.k_pos, 1, front, t_pad, _PAD_POS).reshape(batch, n_blocks, block)
    k_doc = _pad_axis(spec.k_doc, 1, front, t_pad, -3).reshape(batch, n_blocks, block)

    def band(x: jax.Array, axis: int) -> jax.Array:
        """Concatenates the n_kb key blocks of every query block's band along the block axis."""
        parts = [jax.lax.slice_in_dim(x, first + j, first + j + n_qb, axis=axis) for j in range(n_kb)]
        return jnp.concatenate(parts, axis=axis + 1)

    kb_pos, kb_doc = band(k_pos, 1), band(k_doc, 1)  # [B, n_qb, span]
    mask = (
        (kb_pos[:, :, None, :] <= q_pos[:, :, :, None])
        & (kb_pos[:, :, None, :] > q_pos[:, :, :, None] - window)
        & (kb_doc[:, :, None, :] == q_doc[:, :, :, None])
    )  # [B, n_qb, block, span]

    # Rows per scan step: as many as fit the tile budget (small tiles keep XLA:CPU from re-faulting
    # large fresh buffers), and at least one per batch shard of the mesh.
    rows = scan_rows(batch, max(1, _TILE_BYTES // (n_qb * block * span * 4)))
    groups = batch // rows

    # The scan runs over (head, g) and each step takes rows r = 0..rows-1 of b = r * groups + g, so a
    # batch sharded over the mesh stays sharded (each device scans its own rows).
    def split(x):  # [H, B, ...] -> [H * groups, rows, ...]
        x = split_rows(x, rows, axis=1)
        return x.reshape(heads * groups, rows, *x.shape[3:])

    masks = split_rows(mask, rows)  # [groups, rows, ...]

    def step(_, xs):
        index, qg, kg, vg = xs
        m = masks[index % groups]
        kband, vband = band(kg, 1), band(vg, 1)  # [rows, n_qb, span, K]
        s = jnp.einsum("rnqk,rnsk->rnqs", qg, kband, preferred_element_type=jnp.float32)
        s = jnp.where(m, s, _MASKED_SCORE)
        s = s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
        p = jnp.where(m, jnp.exp(s), 0.0)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        out = jnp.einsum("rnqs,rnsk->rnqk", p.astype(vg.dtype), vband)
        return None, out / jnp.where(denom > 0, denom, 1.0).astype(out.dtype)

    steps = jnp.arange(heads * groups)
    # Rematerialised: the backward pass recomputes each tile instead of storing every tile's scores.
    _, out = jax.lax.scan(jax.checkpoint(step), None, (steps, split(qh), split(kh), split(vh)))
    out = merge_rows(out.reshape(heads, groups, rows, n_qb * block, dim), axis=1)[:, :, :t_len]
    return jnp.moveaxis(out, 0, 2)


def use_banded(spec: CausalSpec, t_len: int) -> bool:
    """Banded attention pays off once the queries span a few blocks beyond the window."""
    return spec.ordered and spec.window is not None and t_len >= 2 * default_block(spec.window) and t_len > spec.window // 2

