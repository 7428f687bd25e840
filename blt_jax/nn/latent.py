"""The global latent transformer over patches (block-causal over documents, or causal over the row
with `latent_mask="causal"`; no final norm, unless `latent_norm`: a byteified teacher's)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import BLTConfig
from blt_jax.nn import axes
from blt_jax.nn.block import run_blocks, scanned_blocks, stack_blocks
from blt_jax.nn.cache import KVCache
from blt_jax.nn.layers import Dense, RMSNorm
from blt_jax.nn.masks import CausalSpec
from blt_jax.nn.options import DEFAULT, RunOptions
from blt_jax.nn.rope import rope_tables
from blt_jax.tokenizer import EOS_ID


def patch_document_ids(tokens: jax.Array, patch_ids: jax.Array, num_patches: int) -> jax.Array:
    """Document id of every patch: a patch document ends after each patch that contains an EOS.

    Args:
      tokens: int [B, N].
      patch_ids: int [B, N] encoder patch id of every byte.
      num_patches: P.

    Returns:
      int32 [B, P].
    """

    def one_row(toks, ids):
        has_eos = jax.ops.segment_max((toks == EOS_ID).astype(jnp.int32), ids, num_segments=num_patches)
        has_eos = jnp.maximum(has_eos, 0)  # empty patches: segment_max gives the dtype minimum
        return jnp.cumsum(has_eos) - has_eos

    return jax.vmap(one_row)(tokens, patch_ids)


class LatentTransformer(nn.Module):
    """Causal transformer over patch vectors; positions are patch indices.

    Attributes:
      config: the BLT configuration (uses `latent`, and the input projection when
        k * encoder.dim != latent.dim).
      options: how the stack runs (`nn.options`; its stack name: "latent", which may be scanned:
        one nn.scan over stacked layers, for training, without a cache).
    """

    config: BLTConfig
    options: RunOptions = DEFAULT

    @nn.compact
    def __call__(
        self,
        patches: jax.Array,
        patch_docs: jax.Array,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        store: jax.Array | None = None,
        embedded: bool = False,
        tap: int | None = None,
    ):
        """Latent states of patches.

        Args:
          patches: [B, P, k * D_local] patch vectors (or [B, P, D_latent] with `embedded`).
          patch_docs: int [B, P] document of every patch.
          positions: int [B, P] patch indices (default 0..P-1).
          cache: keys/values of earlier patches (incremental decoding), or None.
          store: bool [B, P], ring caches: which patches to keep in the cache (default all).
          embedded: `patches` are already latent-wide (a teacher's token embeddings): no input projection.
          tap: also return the states after block `tap` (1-based; byteification's hidden-state loss).

        Returns:
          [B, P, D_latent]; with a cache, (outputs, new cache); with `tap`, (outputs, [B, P, D_latent]
          states after block `tap`).
        """
        cfg, st = self.config, self.config.latent
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        x = patches.astype(dt)
        if cfg.has_latent_projection and not embedded:
            x = Dense(
                st.dim,
                (axes.LATENT_IN, axes.EMBED),
                cfg.latent_input_dim**-0.5,
                dt,
                pdt,
                name="token_embedding_projection",
            )(x)
        batch, num_patches = x.shape[:2]
        if cfg.latent_mask == "causal":  # one document per row: patches see earlier documents
            patch_docs = None
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
        rope = rope_tables(positions, st)
        norm = RMSNorm(st.norm_eps, dt, pdt, name="norm") if cfg.latent_norm else (lambda h: h)
        if self.options.scans("latent"):
            if cache is not None or tap is not None:
                raise ValueError("a scanned latent stack has no cached or tapped path; unstack its parameters")
            mask = CausalSpec.self_attention(positions, patch_docs, st.window)
            return norm(scanned_blocks(st, "latent", self.options, dt, pdt)(x, mask, rope))
        blocks = stack_blocks(st, "latent", self.options, dt, pdt, prefix="layers")
        outputs, new_cache = run_blocks(blocks, x, rope, positions, patch_docs, st.window, cache, store)
        out = norm(outputs[-1])
        if tap is not None:
            return out, outputs[tap - 1]
        return out if cache is None else (out, new_cache)
