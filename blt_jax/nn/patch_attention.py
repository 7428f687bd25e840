"""Cross-attention between bytes and patch slots in O(N * k) instead of O(N * P * k).

The cross-attention masks of BLT are groupings: a byte and a slot see each other only if they name the
same patch. So:
  * slots -> bytes (encoder): slot (p, j) attends the bytes of patch p. Scores are computed per byte
    against the k slots of its own patch (a gather), and the softmax over each patch's bytes is a
    segment softmax (segment max, exp, segment sum);
  * bytes -> slots (decoder): byte i attends the k slots of patch q(i): a gather of k keys per byte.
Both are exactly the masked attention of the reference (`attention.masked_attention` with a dense
same-patch mask), up to float summation order; a query with nothing to attend (an empty patch, an
out-of-range patch id) gets exact zeros. Dense masks would score every (slot, byte) pair: for a
1024-byte row at 4.5 bytes per patch that is 230 times the work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blt_jax.nn.softmax import masked_softmax


def slots_attend_bytes(
    q: jax.Array, k: jax.Array, v: jax.Array, patch_ids: jax.Array, slots_per_patch: int
) -> jax.Array:
    """Encoder cross-attention: each of the k slots of patch p attends the bytes of patch p.

    Args:
      q: [B, P*k, H, K] slot queries (slot r belongs to patch r // k).
      k: [B, N, H, K] byte keys.
      v: [B, N, H, K] byte values.
      patch_ids: int [B, N] patch of each byte (ids outside [0, P) attend nothing).
      slots_per_patch: k.

    Returns:
      [B, P*k, H, K]; slots of patches without bytes are exactly zero.
    """
    batch, total, heads, dim = q.shape
    kk = slots_per_patch
    num = total // kk
    if num == 1:
        return _one_patch(q, k, v, patch_ids == 0)
    qs = q.reshape(batch, num, kk, heads, dim)
    valid = (patch_ids >= 0) & (patch_ids < num)
    ids = jnp.where(valid, patch_ids, num)  # num = a dump segment, dropped below
    gathered = jnp.take_along_axis(qs, jnp.minimum(ids, num - 1)[:, :, None, None, None], axis=1)  # [B, N, k, H, K]
    scores = jnp.einsum("bnjhd,bnhd->bnjh", gathered, k, preferred_element_type=jnp.float32) * dim**-0.5

    def per_row(s, value, seg):
        peak = jax.ops.segment_max(s, seg, num_segments=num + 1)  # [P+1, k, H]
        e = jnp.exp(s - jax.lax.stop_gradient(peak)[seg])
        denom = jax.ops.segment_sum(e, seg, num_segments=num + 1)
        weighted = jax.ops.segment_sum(e[..., None] * value[:, None, :, :], seg, num_segments=num + 1)
        out = weighted / jnp.where(denom > 0, denom, 1.0)[..., None]
        return out[:num]  # [P, k, H, K]

    out = jax.vmap(per_row)(scores, v.astype(jnp.float32), ids)
    return out.reshape(batch, total, heads, dim).astype(q.dtype)


def _one_patch(q: jax.Array, k: jax.Array, v: jax.Array, member: jax.Array) -> jax.Array:
    """slots_attend_bytes for a single patch (incremental decoding closes one at a time): a plain
    masked softmax over the member bytes, without the scatters of segment reductions.

    q [B, k, H, K], k/v [B, N, H, K], member bool [B, N] -> [B, k, H, K].
    """
    scores = jnp.einsum("bjhd,bnhd->bhjn", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    probs = masked_softmax(scores, member[:, None, None, :])
    return jnp.einsum("bhjn,bnhd->bjhd", probs, v.astype(jnp.float32)).astype(q.dtype)


def bytes_attend_slots(q: jax.Array, k: jax.Array, v: jax.Array, dec_ids: jax.Array, slots_per_patch: int) -> jax.Array:
    """Decoder cross-attention: byte i attends the k slots of patch dec_ids[i].

    Args:
      q: [B, N, H, K] byte queries.
      k: [B, P*k, H, K] slot keys.
      v: [B, P*k, H, K] slot values.
      dec_ids: int [B, N] patch each byte reads (ids outside [0, P) attend nothing).
      slots_per_patch: k.

    Returns:
      [B, N, H, K].
    """
    batch, total, heads, dim = k.shape
    kk = slots_per_patch
    num = total // kk
    valid = (dec_ids >= 0) & (dec_ids < num)
    index = jnp.clip(dec_ids, 0, num - 1)[:, :, None, None, None]
    ks = jnp.take_along_axis(k.reshape(batch, num, kk, heads, dim), index, axis=1)  # [B, N, k, H, K]
    vs = jnp.take_along_axis(v.reshape(batch, num, kk, heads, dim), index, axis=1)
    scores = jnp.einsum("bnhd,bnjhd->bnhj", q, ks, preferred_element_type=jnp.float32) * dim**-0.5
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bnhj,bnjhd->bnhd", probs.astype(vs.dtype), vs)
    return jnp.where(valid[:, :, None, None], out, 0.0).astype(q.dtype)
