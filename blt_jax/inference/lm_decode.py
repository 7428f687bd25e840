"""Incremental decoding of a plain causal LM: the token transformer (a BPE baseline or a Llama-family
model) or a byte LM (an entropy LM, the study's byte transformer), one cached step per token.

The engine has the interface of the BLT's `decode.DecodeEngine` (`prefill`, `step`, `capacity`), so the
continuous batching of `inference.batching` serves either. Its state is a position, a document id and
one KV cache: a ring over the stack's attention window (every position when the stack has none), so a
step costs one token's projections and attention over the cached keys.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from blt_jax.config import EntropyLMConfig, TokenLMConfig
from blt_jax.nn.cache import KVCache
from blt_jax.nn.entropy_lm import EntropyLM, stream_documents
from blt_jax.tokenizer import EOS_ID


@struct.dataclass
class LMDecodeState:
    """What decoding carries from one token to the next (B rows).

    Attributes:
      t: int32 [B] position of the next token to be consumed in each row.
      doc: int32 [B] document id of the next token (EOS count so far; 0 when the model has no EOS).
      cache: the stack's ring cache.
    """

    t: jax.Array
    doc: jax.Array
    cache: KVCache


@dataclasses.dataclass(frozen=True)
class LMDecodeEngine:
    """Prefill and step functions of one causal LM for positions < `capacity`.

    Attributes:
      config: the model's configuration (a token transformer's or a byte LM's).
      capacity: the most positions a row may reach (prompt + generated tokens).
    """

    config: EntropyLMConfig | TokenLMConfig
    capacity: int

    def __post_init__(self):
        if self.capacity < 2:
            raise ValueError(f"capacity must be >= 2 positions, got {self.capacity}")

    @property
    def eos_id(self) -> int | None:
        """The id that ends a document (attention never crosses it), or None."""
        return getattr(self.config, "eos_id", EOS_ID)

    def _module(self) -> EntropyLM:
        return EntropyLM(self.config)

    def _ring(self, batch: int) -> KVCache:
        stack = self.config.stack
        size = self.capacity if stack.window is None else min(stack.window, self.capacity)
        return KVCache.empty(
            batch, size, stack.n_layers, stack.n_heads, stack.head_dim, jnp.dtype(self.config.dtype), ring=True
        )

    def prefill(
        self, params, entropy_params, tokens: jax.Array, lengths: jax.Array | None = None
    ) -> tuple[LMDecodeState, jax.Array]:
        """Runs the parallel forward over the first tokens of every row and fills the cache.

        Args:
          params: the model's parameters.
          entropy_params: unused (the BLT engine's signature; a plain LM has no patcher).
          tokens: int32 [B, W], BOS first, right-padded when rows differ.
          lengths: int32 [B] tokens of each row, 1..W (default W). The padding is kept in no cache.

        Returns:
          (state at t = lengths, float32 logits [B, V] of the token after each row's last).
        """
        batch, width = tokens.shape
        if width >= self.capacity:
            raise ValueError(f"prompt prefix of {width} tokens does not fit capacity {self.capacity}")
        index = jnp.arange(width, dtype=jnp.int32)
        length = jnp.full((batch,), width, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
        valid = index[None] < length[:, None]
        positions = jnp.broadcast_to(index, (batch, width))
        docs = stream_documents(self.config, tokens)
        logits, cache = self._module().apply({"params": params}, tokens, positions, docs, self._ring(batch), valid)
        last = jnp.take_along_axis(logits, (length - 1)[:, None, None], axis=1)[:, 0]
        ends = (
            jnp.zeros((batch,), jnp.int32)
            if self.eos_id is None
            else jnp.sum((tokens == self.eos_id) & valid, axis=1, dtype=jnp.int32)
        )
        return LMDecodeState(t=length, doc=ends, cache=cache), last

    def step(self, params, entropy_params, state: LMDecodeState, token: jax.Array) -> tuple[LMDecodeState, jax.Array]:
        """Consumes token t of every row and returns the logits of token t + 1.

        Args:
          params / entropy_params: as in `prefill`.
          state: the state at position t.
          token: int32 [B] token t of every row.

        Returns:
          (state at t + 1, float32 logits [B, V]).
        """
        token = token.astype(jnp.int32)
        logits, cache = self._module().apply(
            {"params": params}, token[:, None], state.t[:, None].astype(jnp.int32), state.doc[:, None], state.cache
        )
        ended = jnp.zeros_like(state.doc) if self.eos_id is None else (token == self.eos_id).astype(jnp.int32)
        return LMDecodeState(t=state.t + 1, doc=state.doc + ended, cache=cache), logits[:, 0]
