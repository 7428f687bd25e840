"""The entropy byte LM: a small windowed transformer whose next-byte entropies place patch boundaries.

The same module is the token transformer (`TokenLMConfig`, model kind "token_lm"): a causal stack
over BPE ids instead of bytes, which differs only in its vocabulary size and attention window.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import EntropyLMConfig, TokenLMConfig
from blt_jax.nn import axes
from blt_jax.nn.block import run_blocks, scanned_blocks, stack_blocks
from blt_jax.nn.cache import KVCache
from blt_jax.nn.layers import Dense, Embed, RMSNorm
from blt_jax.nn.masks import CausalSpec, document_ids
from blt_jax.nn.options import DEFAULT, RunOptions
from blt_jax.nn.rope import rope_tables
from blt_jax.nn.rows import merge_rows, scan_rows, split_rows
from blt_jax.tokenizer import EOS_ID


class EntropyLM(nn.Module):
    """Byte LM with local block-causal attention (EOS documents, sliding window); over BPE ids, the
    token transformer.

    Attributes:
      config: the entropy LM configuration, or a token transformer's (it reads only stack,
        vocab_size, dtype and param_dtype, which both have).
      options: how the stack runs (`nn.options`), under `stack_name`.
    """

    # Parameter path of the blocks training may scan (`nn.scan`): the model's own top level.
    STACK_PATH: ClassVar[tuple[str, ...]] = ()

    config: EntropyLMConfig | TokenLMConfig
    options: RunOptions = DEFAULT
    stack_name: str = "entropy"  # its name in the options ("token": the token transformer)

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        docs: jax.Array | None = None,
        cache: KVCache | None = None,
        store: jax.Array | None = None,
    ):
        """Next-token logits.

        Args:
          tokens: int [B, N].
          positions: int [B, N] RoPE positions (default 0..N-1).
          docs: int [B, N] document ids (default: `stream_documents`).
          cache: keys/values of the previous positions (`nn.cache.KVCache`, ordered or ring). With a
            cache the call continues a stream: queries also see the cached positions, and the
            updated cache is returned.
          store: bool [B, N], ring caches only: which positions to keep in the cache (default all;
            right padding of rows of different lengths is not kept).

        Returns:
          fp32 logits [B, N, V] (position t predicts token t + 1); with a cache, (logits, new cache).
        """
        cfg, st = self.config, self.config.stack
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        batch, length = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if docs is None:
            docs = stream_documents(cfg, tokens)
        rope = rope_tables(positions, st)
        embed = Embed(cfg.vocab_size, st.dim, st.dim**-0.5, dt, pdt, name="tok_embeddings")
        h = embed(tokens)
        if self.options.scans(self.stack_name):
            if cache is not None:
                raise ValueError("a scanned entropy LM has no cached path; unstack its parameters to stream")
            mask = CausalSpec.self_attention(positions, docs, st.window)
            h = scanned_blocks(st, self.stack_name, self.options, dt, pdt)(h, mask, rope)
        else:
            blocks = stack_blocks(st, self.stack_name, self.options, dt, pdt, prefix="layers")
            outputs, cache = run_blocks(blocks, h, rope, positions, docs, st.window, cache, store)
            h = outputs[-1]
        h = RMSNorm(st.norm_eps, dt, pdt, name="norm")(h)
        if getattr(cfg, "tie_embeddings", False):  # the head is the embedding table [V, D], transposed
            logits = embed.attend(h).astype(jnp.float32)
        else:
            head = Dense(cfg.vocab_size, (axes.EMBED, axes.VOCAB), st.dim**-0.5, dt, pdt, name="output")
            logits = head(h).astype(jnp.float32)
        return logits if cache is None else (logits, cache)


def stream_documents(config: EntropyLMConfig | TokenLMConfig, tokens: jax.Array) -> jax.Array:
    """Document ids [B, N] of rows of tokens: a document ends after each EOS (a token LM's `eos_id`,
    or none: one document per row)."""
    eos = getattr(config, "eos_id", EOS_ID)
    if eos is None:
        return jnp.zeros(tokens.shape, jnp.int32)
    return document_ids(tokens, eos)


def entropies_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy in nats of each next-token distribution. [..., V] -> fp32 [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropies_fn(config: EntropyLMConfig, rows_per_group: int = 1, options: RunOptions = DEFAULT):
    """A jittable `(params, tokens [B, N]) -> float32 entropies [B, N]`, the model running as
    `options` say.

    Rows are processed `rows_per_group` at a time in a loop (`lax.map`): the same work, but every
    intermediate is a few MB, which on CPU avoids re-faulting large fresh buffers on every call
    (the dominant cost above ~16 MB per buffer) and on accelerators bounds temporary memory.
    """
    module = EntropyLM(config, options)

    def fn(params, tokens):
        batch, length = tokens.shape
        group = scan_rows(batch, rows_per_group)  # at least one row per batch shard of the mesh
        one = lambda rows: entropies_from_logits(module.apply({"params": params}, rows))
        if group == batch:
            return one(tokens)
        return merge_rows(jax.lax.map(one, split_rows(tokens, group)))

    return fn
