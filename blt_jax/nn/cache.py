"""Key/value caches of windowed stacks, as explicit pytrees.

A stack with a sliding window W only ever looks back W - 1 positions, so carrying the keys and values
of the last M = W - 1 positions of every layer lets a long sequence be processed chunk by chunk with
results identical to one forward pass over the whole sequence (and without recomputing overlaps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

EMPTY_DOC = -1  # document id of an unused cache slot: matches no real document


@struct.dataclass
class KVCache:
    """The last M positions of every layer of a stack.

    Attributes:
      k: per layer, keys [B, M, H, K] (RoPE already applied).
      v: per layer, values [B, M, H, K].
      pos: int32 [B, M] position (RoPE index) of each slot.
      doc: int32 [B, M] document id of each slot (EMPTY_DOC when unused).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    pos: jax.Array
    doc: jax.Array

    @classmethod
    def empty(cls, batch: int, size: int, n_layers: int, n_heads: int, head_dim: int, dtype=jnp.float32) -> "KVCache":
        """An all-empty cache of M = `size` slots."""
        zeros = lambda: jnp.zeros((batch, size, n_heads, head_dim), dtype)  # noqa: E731
        return cls(
            k=tuple(zeros() for _ in range(n_layers)),
            v=tuple(zeros() for _ in range(n_layers)),
            pos=jnp.zeros((batch, size), jnp.int32),
            doc=jnp.full((batch, size), EMPTY_DOC, jnp.int32),
        )

    @property
    def size(self) -> int:
        return self.pos.shape[1]
