"""Conversions between patch lengths, patch start flags and per-byte patch ids (static shapes).

Conventions (reference semantics):
  * `patch_lengths` int [B, P]: lengths of the row's patches, trailing zeros for unused patches.
    In the model forward they sum to N + 1: the extra slot is the "next byte", so the last real byte
    has a patch to read from in the decoder.
  * encoder patch id p(i) = #{j : cum[j] <= i} - 1 with cum = [0, l0, l0 + l1, ...] (P + 1 entries):
    the patch containing byte i (empty patches are skipped over).
  * decoder patch id q(i) = p(i + 1) - 1: the last patch that ends at or before byte i. Computed as
    the encoder ids of `patch_lengths[:, 1:]`, which needs the first patch to have length 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patch_ids_from_lengths(patch_lengths: jax.Array, num_positions: int) -> jax.Array:
    """Patch id of every position.

    O(N + P): counts how many patch boundaries fall at each position with a scatter-add, then takes
    a running sum (no [N, P] comparison matrix, which would not fit for 24k-byte rows).

    Args:
      patch_lengths: int [B, P], non-negative.
      num_positions: N.

    Returns:
      int32 [B, N]; positions past the total length get id P.
    """
    lengths = patch_lengths.astype(jnp.int32)
    batch = lengths.shape[0]
    cum = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), jnp.cumsum(lengths, axis=-1)], axis=-1)
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], cum.shape)
    counts = jnp.zeros((batch, num_positions), jnp.int32).at[rows, cum].add(1, mode="drop")
    return jnp.cumsum(counts, axis=-1) - 1


def decoder_patch_ids(patch_lengths: jax.Array, num_positions: int) -> jax.Array:
    """Patch whose latent output byte i's decoder reads: q(i) = p(i + 1) - 1. int32 [B, N].

    Requires patch_lengths[:, 0] == 1 (the reference asserts it).
    """
    return patch_ids_from_lengths(patch_lengths[:, 1:], num_positions)


def lengths_from_starts(starts: jax.Array, num_patches: int) -> jax.Array:
    """Patch lengths from per-position start flags.

    Args:
      starts: bool [B, L]; position 0 must be a start. A patch runs from a start to the next start.
      num_patches: P (static). If a row has more than P patches, the patches past P - 1 are merged
        into patch P - 1 (so lengths always sum to L); more starts than P tells that it happened.

    Returns:
      int32 [B, P], trailing zeros.
    """
    ids = jnp.minimum(jnp.cumsum(starts.astype(jnp.int32), axis=-1) - 1, num_patches - 1)
    ids = jnp.maximum(ids, 0)
    rows = jnp.broadcast_to(jnp.arange(starts.shape[0])[:, None], ids.shape)
    return jnp.zeros((starts.shape[0], num_patches), jnp.int32).at[rows, ids].add(1)


def starts_from_lengths(patch_lengths: jax.Array, num_positions: int) -> jax.Array:
    """Start flags of the non-empty patches. bool [B, L] with L = num_positions."""
    lengths = patch_lengths.astype(jnp.int32)
    batch = lengths.shape[0]
    begin = jnp.cumsum(lengths, axis=-1) - lengths
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], begin.shape)
    flags = jnp.zeros((batch, num_positions), jnp.int32)
    flags = flags.at[rows, jnp.where(lengths > 0, begin, num_positions)].add(1, mode="drop")
    return flags > 0
