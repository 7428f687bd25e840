"""Local encoder (bytes -> patch vectors) and local decoder (patch vectors -> next-byte logits)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import BLTConfig, StackConfig
from blt_jax.nn import axes
from blt_jax.nn.attention import CrossAttention
from blt_jax.nn.block import block_class
from blt_jax.nn.hash_embed import HashEmbedding
from blt_jax.nn.layers import Dense, Embed, RMSNorm, rope_tables
from blt_jax.nn.masks import CausalSpec


def local_self_mask(positions: jax.Array, doc_ids: jax.Array, stack: StackConfig) -> CausalSpec:
    """Causal + same-document + sliding-window mask of a local stack (as ids)."""
    return CausalSpec.self_attention(positions, doc_ids, stack.window)


def max_pool_patches(h: jax.Array, patch_ids: jax.Array, num_patches: int) -> jax.Array:
    """Per-patch max over the patch's bytes; patches without bytes pool to exactly 0.

    Args:
      h: [B, N, D] byte states.
      patch_ids: int [B, N] patch of each byte (ids >= P are ignored).
      num_patches: P.

    Returns:
      [B, P, D].
    """

    def one_row(states, ids):
        pooled = jax.ops.segment_max(states, ids, num_segments=num_patches)
        count = jax.ops.segment_sum(jnp.ones_like(ids), ids, num_segments=num_patches)
        return jnp.where(count[:, None] > 0, pooled, jnp.zeros_like(pooled))

    return jax.vmap(one_row)(h, patch_ids)


class LocalEncoder(nn.Module):
    """Embeds bytes (byte + hash n-gram embeddings), runs the windowed local stack, and builds k
    patch vectors per patch by max-pooling followed by cross-attention to the patch's own bytes.

    Attributes:
      config: the BLT configuration.
    """

    config: BLTConfig
    remat: str = "none"

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        patch_ids: jax.Array,
        num_patches: int,
        positions: jax.Array,
        doc_ids: jax.Array,
        embeds: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes one batch of rows.

        Args:
          tokens: int [B, N].
          patch_ids: int [B, N] encoder patch id of every byte.
          num_patches: P.
          positions: int [B, N] RoPE positions.
          doc_ids: int [B, N] EOS-delimited document ids.
          embeds: [B, N, D] precomputed byte + hash embeddings (`hash_embed.byte_embeddings`), or None
            to compute them here.

        Returns:
          (h [B, N, D] byte states of the last layer (no final norm),
           patches [B, P, k * D] patch vectors for the latent transformer).
        """
        cfg, st = self.config, self.config.encoder
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        batch, k, dim = tokens.shape[0], cfg.cross_attn_k, st.dim
        if embeds is not None:
            h = embeds.astype(dt)
        else:
            h = Embed(cfg.vocab_size, dim, dim**-0.5, dt, pdt, name="tok_embeddings")(tokens)
            if cfg.hash is not None:
                h = HashEmbedding(cfg.hash, dim, dt, pdt, name="hash_embeddings")(tokens, h)

        mask = local_self_mask(positions, doc_ids, st)
        rope = rope_tables(positions, st.head_dim, st.rope_theta)

        patches = None
        for i in range(st.n_layers):
            h = block_class(self.remat)(st, i, dt, pdt, name=f"layers_{i}")(h, mask, rope)
            if i == st.n_layers - 1 or cfg.cross_attn_all_layers_encoder:
                if patches is None:
                    # Queries start from the max-pooled states of this layer (pooled once, even
                    # when cross-attention follows every layer), projected to k slots per patch:
                    # slot r of the result belongs to patch r // k.
                    pooled = max_pool_patches(h, patch_ids, num_patches)
                    proj = Dense(k * dim, (axes.EMBED, axes.PATCH_SLOTS), dim**-0.5, dt, pdt,
                                 name="patch_embedding_projection")
                    patches = proj(pooled).reshape(batch, num_patches * k, dim)
                j = i if cfg.cross_attn_all_layers_encoder else 0
                ca = CrossAttention(cfg.cross_attn_heads, k, True, j, st.norm_eps, dt, pdt,
                                    name=f"cross_attn_layers_{j}")
                # The reference adds the residual twice (inside CrossAttention and again around it).
                patches = 2 * patches + ca(patches, h, patch_ids)
        return h, patches.reshape(batch, num_patches, k * dim)


class LocalDecoder(nn.Module):
    """Cross-attends every byte to the latent output of its decoder patch before each layer (or the
    first one), runs the windowed local stack, and predicts the next byte.

    Attributes:
      config: the BLT configuration.
    """

    config: BLTConfig
    remat: str = "none"

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        latent_out: jax.Array,
        dec_patch_ids: jax.Array,
        positions: jax.Array,
        doc_ids: jax.Array,
    ) -> jax.Array:
        """Decodes one batch of rows.

        Args:
          h: [B, N, D] the encoder's byte states.
          latent_out: [B, P, D_latent] latent transformer outputs.
          dec_patch_ids: int [B, N] decoder patch id q(i) = p(i + 1) - 1 of every byte.
          positions: int [B, N] RoPE positions.
          doc_ids: int [B, N] EOS-delimited document ids.

        Returns:
          fp32 logits [B, N, V]; position i predicts byte i + 1.
        """
        cfg, st = self.config, self.config.decoder
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        batch, num_patches = latent_out.shape[:2]
        k, dim = cfg.cross_attn_k, st.dim
        proj = Dense(k * dim, (axes.EMBED, axes.PATCH_SLOTS), cfg.latent.dim**-0.5, dt, pdt,
                     name="patch_embedding_projection")
        slots = proj(latent_out).reshape(batch, num_patches * k, dim)
        mask = local_self_mask(positions, doc_ids, st)
        rope = rope_tables(positions, st.head_dim, st.rope_theta)

        h = h.astype(dt)
        for i in range(st.n_layers):
            if i == 0 or cfg.cross_attn_all_layers_decoder:
                ca = CrossAttention(cfg.cross_attn_heads, k, False, i, st.norm_eps, dt, pdt,
                                    name=f"cross_attn_layers_{i}")
                h = 2 * h + ca(h, slots, dec_patch_ids)  # doubled residual, as in the reference
            h = block_class(self.remat)(st, i, dt, pdt, name=f"layers_{i}")(h, mask, rope)
        h = RMSNorm(st.norm_eps, dt, pdt, name="norm")(h)
        head = Dense(cfg.vocab_size, (axes.EMBED, axes.VOCAB), dim**-0.5, dt, pdt, name="output")
        return head(h).astype(jnp.float32)
