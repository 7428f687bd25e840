"""Hash n-gram embeddings of the local encoder, bit-exact to the reference's int64 arithmetic.

The reference hashes each window (x_{i-n+1}, ..., x_i) of token ids (bytes + 4, specials included,
zero-padded at the row start) as sum_m x_{i-n+1+m} * p^m in torch int64 (silently wrapping; the oldest
byte gets p^0), then takes a floor modulo (non-negative) by the table size.

TPUs have no native 64-bit integers and JAX keeps x64 off, so the 64-bit value is carried here as four
16-bit limbs in uint32 lanes: window ids are < 512 and p^m mod 2^64 limbs are < 2^16, so each limb
accumulates at most 64 * 511 * 65535 < 2^32 (n <= 64 is validated in HashConfig). The modulo runs by
Horner's rule over the 8 bytes of the wrapped sum (r * 256 + 255 < 2^31 for tables < 2^23 buckets),
and the signed floor-mod of the reference becomes: if the int64 is negative (bit 63 set), subtract
2^64 mod m. Everything stays in 32-bit integer ops.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import HashConfig
from blt_jax.nn import axes
from blt_jax.nn.layers import Dtype, param, trunc_normal

# One prime per hash function, in the reference's order.
PRIMES = (
    1000000007,
    5915587277,
    1500450271,
    3267000013,
    5754853343,
    4093082899,
    9576890767,
    3628273133,
    2860486313,
    5463458053,
    3367900313,
)
_MASK64 = (1 << 64) - 1


def _limbs16(value: int) -> tuple[int, int, int, int]:
    value &= _MASK64
    return tuple((value >> (16 * j)) & 0xFFFF for j in range(4))


def hash_ids(tokens: jax.Array, n: int, prime: int, vocab: int) -> jax.Array:
    """Hash bucket of the n-gram ending at every position.

    Args:
      tokens: int [B, N] token ids in [0, 512).
      n: n-gram size (window length).
      prime: the hash function's prime.
      vocab: number of buckets m.

    Returns:
      int32 [B, N] in [0, m): (sum_m x_{i-n+1+m} p^m as wrapped int64) floor-mod m.
    """
    length = tokens.shape[-1]
    padded = jnp.pad(tokens.astype(jnp.uint32), ((0, 0), (n - 1, 0)))
    acc = [jnp.zeros(tokens.shape, jnp.uint32) for _ in range(4)]
    for m in range(n):
        window_elem = jax.lax.slice_in_dim(padded, m, m + length, axis=1)
        for j, c in enumerate(_limbs16(pow(prime, m, 1 << 64))):
            if c:
                acc[j] = acc[j] + window_elem * jnp.uint32(c)
    limbs, carry = [], jnp.zeros(tokens.shape, jnp.uint32)
    for j in range(4):
        total = acc[j] + carry
        limbs.append(total & jnp.uint32(0xFFFF))
        carry = total >> jnp.uint32(16)
    m_u = jnp.uint32(vocab)
    rem = jnp.zeros(tokens.shape, jnp.uint32)
    for j in reversed(range(4)):
        for shift in (8, 0):
            byte = (limbs[j] >> jnp.uint32(shift)) & jnp.uint32(0xFF)
            rem = (rem * jnp.uint32(256) + byte) % m_u
    negative = limbs[3] >= jnp.uint32(0x8000)
    wrap = jnp.uint32((1 << 64) % vocab)
    rem = jnp.where(negative, (rem + m_u - wrap) % m_u, rem)
    return rem.astype(jnp.int32)


def all_hash_ids(tokens: jax.Array, config: HashConfig) -> list[jax.Array]:
    """Bucket ids for every table, in table order (function-major, then group size). T x int32 [B, N]."""
    return [hash_ids(tokens, n, PRIMES[f], config.vocab) for f in range(config.n_functions) for n in config.group_sizes]


def add_hash_embeddings(tables: jax.Array, tokens: jax.Array, config: HashConfig, embeds: jax.Array) -> jax.Array:
    """embeds + the hash n-gram embeddings of tokens, one table at a time in the reference's order.

    Args:
      tables: [T, G, D] stacked tables.
      tokens: int [B, N].
      config: the hash configuration.
      embeds: [B, N, D].

    Returns:
      [B, N, D] in embeds' dtype.
    """
    for t, ids in enumerate(all_hash_ids(tokens, config)):
        embeds = embeds + jnp.take(tables[t], ids, axis=0).astype(embeds.dtype)
    return embeds


class HashEmbedding(nn.Module):
    """Adds the hash n-gram embeddings to a byte embedding.

    Attributes:
      config: table sizes and hash functions.
      features: D (the local encoder width).
      dtype / param_dtype: compute and parameter dtypes.
    """

    config: HashConfig
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, embeds: jax.Array) -> jax.Array:
        """tokens int [B, N], embeds [B, N, D] -> embeds + sum over tables of table[hash]. [B, N, D]."""
        tables = param(
            self,
            "embedding",
            trunc_normal(self.features**-0.5),
            (self.config.n_tables, self.config.vocab, self.features),
            (axes.HASH_TABLES, axes.HASH_VOCAB, axes.EMBED),
            self.param_dtype,
        )
        return add_hash_embeddings(tables, tokens, self.config, embeds.astype(self.dtype))
