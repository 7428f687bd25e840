"""Key/value caches of transformer stacks, as explicit pytrees.

Two layouts share one type:
  * ordered (`ring=False`): the last M positions in order. A chunk of T positions attends to
    [cache, chunk] (M + T keys, still ordered, so banded window attention applies) and the cache keeps
    the last M of them. A stack with window W only looks back W - 1 positions, so M = W - 1 makes a
    long sequence processed chunk by chunk identical to one pass (the entropy pass streams this way).
  * ring (`ring=True`): S slots written at slot = position % S, each slot remembering its position and
    document, so the mask needs no ordering. A single new position is written first and attends to
    the S slots in place: no copy of the cache per step, which is what incremental decoding needs
    (S >= W for a windowed stack; S >= every position for a full-causal one). Rings are stored in
    the layouts the attention matmuls read directly (keys [B, H, K, S], values [B, H, S, K]): in
    the query-major layout XLA:CPU would transpose every layer's ring on every step. A longer chunk attends
    to [slots, chunk] (or, filling an empty ring at prompt prefill, to itself) and then writes its
    last S positions.

Keys are stored with RoPE already applied, so a cached key never needs its position again except for
the mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from blt_jax.nn.masks import CausalSpec

EMPTY_DOC = -1  # document id of an unused cache slot: matches no real document


@struct.dataclass
class KVCache:
    """Keys and values of every layer of a stack.

    Attributes:
      k: per layer, keys [B, M, H, K] (RoPE already applied); rings: [B, H, K, M].
      v: per layer, values [B, M, H, K]; rings: [B, H, M, K].
      pos: int32 [B, M] position (RoPE index) of each slot.
      doc: int32 [B, M] document id of each slot (EMPTY_DOC when unused).
      ring: layout (static): ring buffer indexed by position % M, or the last M positions in order.
      fresh: (static) a ring known to be empty (from `empty`); the first call fills it.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    pos: jax.Array
    doc: jax.Array
    ring: bool = struct.field(pytree_node=False, default=False)
    fresh: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def empty(
        cls, batch: int, size: int, n_layers: int, n_heads: int, head_dim: int, dtype=jnp.float32, ring: bool = False
    ) -> KVCache:
        """An all-empty cache of M = `size` slots."""
        v_shape = (batch, n_heads, size, head_dim) if ring else (batch, size, n_heads, head_dim)
        k_shape = (batch, n_heads, head_dim, size) if ring else v_shape
        return cls(
            k=tuple(jnp.zeros(k_shape, dtype) for _ in range(n_layers)),
            v=tuple(jnp.zeros(v_shape, dtype) for _ in range(n_layers)),
            pos=jnp.zeros((batch, size), jnp.int32),
            doc=jnp.full((batch, size), EMPTY_DOC, jnp.int32),
            ring=ring,
            fresh=ring,
        )

    @property
    def size(self) -> int:
        return self.pos.shape[1]


@struct.dataclass
class LayerPrefix:
    """What one attention layer sees of its cache during a cached call.

    Attributes:
      k, v: the layer's cached keys/values [B, M, H, K].
      slots: int32 [B, T] ring slot of each new position (out of range = not written); None for an
        ordered cache (new positions are appended).
      mode: (static) what the new positions attend to: "append" (ordered cache + chunk), "ring"
        (one new position, written first, attends to the ring alone), "ring_chunk" (ring + chunk,
        then written) or "fresh" (an empty ring being filled: the chunk alone, then written).
    """

    k: jax.Array
    v: jax.Array
    slots: jax.Array | None = None
    mode: str = struct.field(pytree_node=False, default="append")


@struct.dataclass
class CachedCall:
    """Everything a cached call of a stack shares across its layers (computed once per call).

    Attributes:
      mask: ids of the T queries and of the keys every layer attends to.
      slots: ring slots of the new positions, or None (ordered cache).
      pos, doc: int32 [B, M] slot ids after the call (ring caches).
      mode: see LayerPrefix.
    """

    mask: CausalSpec
    slots: jax.Array | None
    pos: jax.Array | None
    doc: jax.Array | None
    mode: str = struct.field(pytree_node=False, default="append")


def _ring_slots(cache: KVCache, positions: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Slot of each new position; positions that must not be written get slot M (dropped)."""
    size, length = cache.size, positions.shape[1]
    slots = positions % size
    # Of a chunk longer than the ring only the last M positions to be stored survive (per row: rows of
    # different lengths are right-padded); writing the others too would make the scatter's result
    # depend on the order of duplicate writes.
    index = jnp.arange(length)[None, :]
    if valid is None:
        return jnp.where(index >= length - size, slots, size).astype(jnp.int32)
    end = jnp.max(jnp.where(valid, index + 1, 0), axis=1, keepdims=True)  # one past the last stored entry
    return jnp.where(valid & (index >= end - size), slots, size).astype(jnp.int32)


def _scatter(buffer: jax.Array, slots: jax.Array, values: jax.Array) -> jax.Array:
    """buffer [B, M, ...] with values [B, T, ...] written at slots [B, T] (slot M = skip)."""
    rows = jnp.arange(buffer.shape[0])[:, None]
    return buffer.at[rows, slots].set(values.astype(buffer.dtype), mode="drop")


def _scatter_ring(ring: jax.Array, slots: jax.Array, values: jax.Array, keys: bool) -> jax.Array:
    """A ring (keys [B, H, K, M] or values [B, H, M, K]) with values [B, T, H, K] written at slots
    [B, T] (slot M = skip)."""
    rows = jnp.arange(ring.shape[0])[:, None, None]
    head = jnp.arange(ring.shape[1])[None, :, None]
    new = jnp.swapaxes(values, 1, 2).astype(ring.dtype)  # [B, H, T, K]
    if keys:  # advanced indices around a slice: the indexed region is laid out [B, H, T, K]
        return ring.at[rows, head, :, slots[:, None, :]].set(new, mode="drop")
    return ring.at[rows, head, slots[:, None, :]].set(new, mode="drop")


def _ring_as_chunk(ring: jax.Array, keys: bool) -> jax.Array:
    """A ring in the [B, M, H, K] layout of a chunk's keys/values."""
    return jnp.transpose(ring, (0, 3, 1, 2)) if keys else jnp.swapaxes(ring, 1, 2)


def cached_call(
    cache: KVCache, positions: jax.Array, docs: jax.Array, window: int | None, valid: jax.Array | None = None
) -> CachedCall:
    """The shared part of a cached call.

    Args:
      cache: the stack's cache.
      positions: int [B, T] positions of the new entries.
      docs: int [B, T] their document ids.
      window: the stack's attention window (None = full causal).
      valid: bool [B, T], ring caches only: which new positions to store (default all). Queries of
        positions that are not stored still get their outputs; nothing of them is kept.

    Returns:
      A CachedCall.
    """
    if not cache.ring:
        key_pos = jnp.concatenate([cache.pos, positions], axis=1)
        key_doc = jnp.concatenate([cache.doc, docs], axis=1)
        return CachedCall(CausalSpec(positions, docs, key_pos, key_doc, window), None, None, None)
    slots = _ring_slots(cache, positions, valid)
    new_pos, new_doc = _scatter(cache.pos, slots, positions), _scatter(cache.doc, slots, docs)
    if cache.fresh:  # an empty ring (prompt prefill): the chunk attends to itself, in order
        return CachedCall(CausalSpec.self_attention(positions, docs, window), slots, new_pos, new_doc, "fresh")
    if positions.shape[1] == 1:
        mask = CausalSpec(positions, docs, new_pos, new_doc, window, ordered=False)
        return CachedCall(mask, slots, new_pos, new_doc, "ring")
    key_pos = jnp.concatenate([cache.pos, positions], axis=1)
    key_doc = jnp.concatenate([cache.doc, docs], axis=1)
    mask = CausalSpec(positions, docs, key_pos, key_doc, window, ordered=False)
    return CachedCall(mask, slots, new_pos, new_doc, "ring_chunk")


def layer_prefix(cache: KVCache, layer: int, call: CachedCall) -> LayerPrefix:
    """The LayerPrefix of one layer in a cached call."""
    return LayerPrefix(cache.k[layer], cache.v[layer], call.slots, call.mode)


def attend_keys(prefix: LayerPrefix, k: jax.Array, v: jax.Array):
    """Keys/values a cached layer attends to, and what it hands back for the cache.

    Args:
      prefix: the layer's cache view.
      k, v: [B, T, H, K] keys (rotated) and values of the new positions.

    Returns:
      (keys, values, update): keys/values [B, S, H, K], or the ring's layouts in mode "ring";
      update is (k, v) of the new positions (ordered caches) or the written ring (ring caches).
    """
    if prefix.mode == "append":
        keys = jnp.concatenate([prefix.k.astype(k.dtype), k], axis=1)
        values = jnp.concatenate([prefix.v.astype(v.dtype), v], axis=1)
        return keys, values, (k, v)
    ring_k = _scatter_ring(prefix.k, prefix.slots, k, keys=True)
    ring_v = _scatter_ring(prefix.v, prefix.slots, v, keys=False)
    if prefix.mode == "ring":  # read in place by `attention.ring_attention`
        return ring_k.astype(k.dtype), ring_v.astype(v.dtype), (ring_k, ring_v)
    if prefix.mode == "fresh":
        return k, v, (ring_k, ring_v)
    keys = jnp.concatenate([_ring_as_chunk(prefix.k, True).astype(k.dtype), k], axis=1)
    values = jnp.concatenate([_ring_as_chunk(prefix.v, False).astype(v.dtype), v], axis=1)
    return keys, values, (ring_k, ring_v)


def finish(cache: KVCache, call: CachedCall, updates: list) -> KVCache:
    """The cache after a cached call, from the call and every layer's update (in layer order)."""
    if cache.ring:
        return KVCache(
            tuple(u[0] for u in updates), tuple(u[1] for u in updates), call.pos, call.doc, ring=True, fresh=False
        )
    keep = cache.size
    if keep == 0:
        return cache

    def trim(old, new):
        return jnp.concatenate([old, new.astype(old.dtype)], axis=1)[:, -keep:]

    new_k = tuple(trim(cache.k[i], u[0]) for i, u in enumerate(updates))
    new_v = tuple(trim(cache.v[i], u[1]) for i, u in enumerate(updates))
    mask = call.mask
    return KVCache(new_k, new_v, mask.k_pos[:, -keep:], mask.k_doc[:, -keep:], False)
