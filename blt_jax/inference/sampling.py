"""Choosing the next byte from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

Only bytes and EOS can be produced: the other special ids (BOE/pad, BOS, BPE) and any id past the
byte range are masked out before anything else, so generated text never holds an invalid token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from blt_jax.config import ConfigError, require
from blt_jax.nn.softmax import MASKED_SCORE
from blt_jax.tokenizer import EOS_ID, OFFSET


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next byte is chosen.

    Attributes:
      temperature: 0 = greedy (argmax); otherwise logits are divided by it before sampling.
      top_k: sample among the k most likely ids (None = all).
      top_p: sample among the smallest set of ids whose probability reaches p (None = all).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        require(self.temperature >= 0, "sampling.temperature", f"must be >= 0, got {self.temperature}")
        require(self.top_k is None or self.top_k >= 1, "sampling.top_k", f"must be >= 1, got {self.top_k}")
        require(self.top_p is None or 0 < self.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
            raise ConfigError("sampling", "top_k / top_p need a temperature > 0 (temperature 0 is greedy)")


def allowed_ids(vocab_size: int) -> jax.Array:
    """bool [V]: the ids generation may emit (bytes and EOS)."""
    ids = jnp.arange(vocab_size)
    return ((ids >= OFFSET) & (ids < OFFSET + 256)) | (ids == EOS_ID)


def _top_k(logits: jax.Array, k: int) -> jax.Array:
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, MASKED_SCORE)


def _top_p(logits: jax.Array, p) -> jax.Array:
    """Keeps an id if the mass strictly before it is < p (the most likely id always kept); p is one
    number or one per row ([B, 1])."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep_sorted = ((jnp.cumsum(probs, axis=-1) - probs) < p).at[:, 0].set(True)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, MASKED_SCORE)


def sample(logits: jax.Array, key: jax.Array, config: SamplingConfig) -> jax.Array:
    """Next token of every row.

    Args:
      logits: float [B, V].
      key: PRNG key (unused when greedy).
      config: the sampling rule.

    Returns:
      int32 [B], always a byte id or EOS.
    """
    logits = jnp.where(allowed_ids(logits.shape[-1]), logits.astype(jnp.float32), MASKED_SCORE)
    if config.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / config.temperature
    if config.top_k is not None:
        logits = _top_k(logits, min(config.top_k, logits.shape[-1]))
    if config.top_p is not None and config.top_p < 1:
        logits = _top_p(logits, config.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def sample_rows(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    allowed: jax.Array | None = None,
) -> jax.Array:
    """Next token of every row, each row with its own rule (continuous batching: requests that share a
    batch keep their own sampling). Row r gives what `sample` gives for
    SamplingConfig(temperature[r], top_k[r] or None, top_p[r]) with key keys[r]: the same argmax when
    greedy, the same candidates otherwise.

    Args:
      logits: float [B, V].
      keys: PRNG keys [B].
      temperature: float32 [B], 0 = greedy.
      top_k: int32 [B], 0 = all ids.
      top_p: float32 [B], 1 = all ids.
      allowed: bool [V], the ids that may be chosen (default `allowed_ids`: bytes and EOS; a token
        LM's vocabulary gives its own, `vocabulary.Vocabulary.allowed`).

    Returns:
      int32 [B], always an allowed id.
    """
    vocab = logits.shape[-1]
    allowed = allowed_ids(vocab) if allowed is None else allowed
    logits = jnp.where(allowed, logits.astype(jnp.float32), MASKED_SCORE)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    # Top-k: keep ids at least as likely as the k-th (ties kept, as `_top_k`).
    ordered = -jnp.sort(-scaled, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
    scaled = jnp.where(scaled >= kth, scaled, MASKED_SCORE)
    scaled = jnp.where(top_p[:, None] >= 1, scaled, _top_p(scaled, top_p[:, None]))
    drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, scaled).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)
