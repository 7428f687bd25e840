"""The entropy byte LM: a small windowed transformer whose next-byte entropies place patch boundaries."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import EntropyLMConfig
from blt_jax.nn import axes
from blt_jax.nn.block import TransformerBlock
from blt_jax.nn.layers import Dense, Embed, RMSNorm, rope_tables
from blt_jax.nn.masks import causal_mask, document_ids


class EntropyLM(nn.Module):
    """Byte LM with local block-causal attention (EOS documents, sliding window).

    Attributes:
      config: the entropy LM configuration.
    """

    config: EntropyLMConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int [B, N] -> fp32 logits [B, N, V]; position t predicts token t + 1."""
        cfg, st = self.config, self.config.stack
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        batch, length = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        docs = document_ids(tokens)
        mask = causal_mask(positions, positions, docs, docs, st.window)
        rope = rope_tables(positions, st.head_dim, st.rope_theta)
        h = Embed(cfg.vocab_size, st.dim, st.dim**-0.5, dt, pdt, name="tok_embeddings")(tokens)
        for i in range(st.n_layers):
            h = TransformerBlock(st, i, dt, pdt, name=f"layers_{i}")(h, mask, rope)
        h = RMSNorm(st.norm_eps, dt, pdt, name="norm")(h)
        head = Dense(cfg.vocab_size, (axes.EMBED, axes.VOCAB), st.dim**-0.5, dt, pdt, name="output")
        return head(h).astype(jnp.float32)


def entropies_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy in nats of each next-token distribution. [..., V] -> fp32 [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
