"""Attention masks, built from small id arrays (never from Python loops).

Every BLT mask is a predicate on per-position ids:
  * local self-attention (encoder, decoder, entropy LM): causal, same EOS-delimited document, and
    within a sliding window W: key j visible to query i iff i - W < j <= i and doc(j) == doc(i);
  * latent self-attention: causal over patches within the same document of patches;
  * cross-attention: a query and a key match iff they name the same patch (never materialised:
    `patch_attention.py` gathers each query's patch instead).
True means "may attend".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from blt_jax.tokenizer import EOS_ID


def document_ids(tokens: jax.Array, eos_id: int = EOS_ID) -> jax.Array:
    """Index of the document of every position; a document ends *after* each EOS.

    Args:
      tokens: int [B, N].

    Returns:
      int32 [B, N]: number of EOS tokens strictly before each position.
    """
    is_eos = (tokens == eos_id).astype(jnp.int32)
    return jnp.cumsum(is_eos, axis=-1) - is_eos


def causal_mask(
    q_pos: jax.Array,
    k_pos: jax.Array,
    q_doc: jax.Array,
    k_doc: jax.Array,
    window: int | None = None,
) -> jax.Array:
    """Causal (+ same document, + sliding window) mask.

    Args:
      q_pos: int [B, T] query positions.
      k_pos: int [B, S] key positions.
      q_doc: int [B, T] query document ids.
      k_doc: int [B, S] key document ids.
      window: W, or None for no window.

    Returns:
      bool [B, T, S].
    """
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    mask = (kp <= qp) & (q_doc[:, :, None] == k_doc[:, None, :])
    if window is not None:
        mask = mask & (kp > qp - window)
    return mask


@struct.dataclass
class CausalSpec:
    """A causal (+ document, + window) self-attention mask described by ids, not materialised.

    Queries are the last T of the S keys (T == S without a cache prefix). Positions must increase by
    one per index within a document (true of every BLT row and stream), which lets windowed
    attention compute only the band of keys the window allows.

    Attributes:
      q_pos, q_doc: int [B, T] query positions and document ids.
      k_pos, k_doc: int [B, S] key positions and document ids.
      window: W, or None (full causal).
      ordered: keys are in position order with the queries last (a ring cache's keys are not), which
        is what lets windowed attention compute only a band.
      one_document: every position is in one document (a causal latent): kernels need no segment ids.
    """

    q_pos: jax.Array
    q_doc: jax.Array
    k_pos: jax.Array
    k_doc: jax.Array
    window: int | None = struct.field(pytree_node=False, default=None)
    ordered: bool = struct.field(pytree_node=False, default=True)
    one_document: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def self_attention(cls, positions: jax.Array, docs: jax.Array | None, window: int | None) -> CausalSpec:
        """Positions attending to themselves; docs None: one document."""
        if docs is None:
            return cls(
                positions, jnp.zeros_like(positions), positions, jnp.zeros_like(positions), window, one_document=True
            )
        return cls(positions, docs, positions, docs, window)

    def dense(self) -> jax.Array:
        """The mask as booleans. [B, T, S]."""
        return causal_mask(self.q_pos, self.k_pos, self.q_doc, self.k_doc, self.window)
