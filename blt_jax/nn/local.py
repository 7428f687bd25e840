"""Local encoder (bytes -> patch vectors) and local decoder (patch vectors -> next-byte logits)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import BLTConfig
from blt_jax.nn import axes
from blt_jax.nn.attention import CrossAttention
from blt_jax.nn.block import run_blocks, stack_blocks
from blt_jax.nn.cache import KVCache
from blt_jax.nn.hash_embed import HashEmbedding
from blt_jax.nn.layers import Dense, Embed, RMSNorm
from blt_jax.nn.options import DEFAULT, RunOptions
from blt_jax.nn.rope import rope_tables


def max_pool_patches(h: jax.Array, patch_ids: jax.Array, num_patches: int) -> jax.Array:
    """Per-patch max over the patch's bytes; patches without bytes pool to exactly 0.

    Args:
      h: [B, N, D] byte states.
      patch_ids: int [B, N] patch of each byte (ids >= P are ignored).
      num_patches: P.

    Returns:
      [B, P, D].
    """

    if num_patches == 1:  # one patch (incremental decoding): a masked max, no scatter
        member = (patch_ids == 0)[:, :, None]
        pooled = jnp.max(jnp.where(member, h, jnp.finfo(h.dtype).min), axis=1, keepdims=True)
        return jnp.where(jnp.any(member, axis=1, keepdims=True), pooled, jnp.zeros_like(pooled))

    def one_row(states, ids):
        pooled = jax.ops.segment_max(states, ids, num_segments=num_patches)
        count = jax.ops.segment_sum(jnp.ones_like(ids), ids, num_segments=num_patches)
        return jnp.where(count[:, None] > 0, pooled, jnp.zeros_like(pooled))

    return jax.vmap(one_row)(h, patch_ids)


class LocalEncoder(nn.Module):
    """Embeds bytes (byte + hash n-gram embeddings), runs the windowed local stack, and builds k
    patch vectors per patch by max-pooling followed by cross-attention to the patch's own bytes.

    The steps are separate methods so incremental decoding can run the byte stack one byte at a time
    (`embed`, `byte_states` with a cache, `byte_keys_values`) and build a patch's vector when the
    patch closes (`slot_vectors`).

    Attributes:
      config: the BLT configuration.
      options: how the stack runs (`nn.options`; its stack name: "encoder").
    """

    config: BLTConfig
    options: RunOptions = DEFAULT

    def setup(self):
        cfg, st = self.config, self.config.encoder
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        dim, k = st.dim, cfg.cross_attn_k
        self.tok_embeddings = Embed(cfg.vocab_size, dim, dim**-0.5, dt, pdt)
        if cfg.hash is not None:
            self.hash_embeddings = HashEmbedding(cfg.hash, dim, dt, pdt)
        self.layers = stack_blocks(st, "encoder", self.options, dt, pdt)
        self.patch_embedding_projection = Dense(k * dim, (axes.EMBED, axes.PATCH_SLOTS), dim**-0.5, dt, pdt)
        self.cross_attn_layers = [
            CrossAttention(dim, cfg.cross_attn_heads, k, True, j, st.norm_eps, dt, pdt)
            for j in range(len(self.cross_layer_indices()))
        ]

    def cross_layer_indices(self) -> list[int]:
        """Layers after which cross-attention runs (all of them, or the last one)."""
        n = self.config.encoder.n_layers
        return list(range(n)) if self.config.cross_attn_all_layers_encoder else [n - 1]

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Byte + hash n-gram embeddings. tokens int [B, N] (zero-padded left context for the hash
        windows is implicit at position 0) -> [B, N, D]."""
        h = self.tok_embeddings(tokens)
        if self.config.hash is not None:
            h = self.hash_embeddings(tokens, h)
        return h

    def byte_states(
        self,
        h: jax.Array,
        positions: jax.Array,
        doc_ids: jax.Array,
        cache: KVCache | None = None,
        store: jax.Array | None = None,
    ):
        """Runs the local stack.

        Args:
          h: [B, T, D] embeddings.
          positions: int [B, T] RoPE positions.
          doc_ids: int [B, T] EOS-delimited document ids.
          cache: the stack's KVCache (incremental use) or None.
          store: bool [B, T], ring caches only: which positions to keep (default all).

        Returns:
          (states [n_cross x [B, T, D]] after each cross-attention layer, the updated cache or None).
          The last entry is the last layer's output (no final norm), the decoder's input.
        """
        st = self.config.encoder
        rope = rope_tables(positions, st)
        outputs, cache = run_blocks(
            self.layers, h.astype(self.config.dtype), rope, positions, doc_ids, st.window, cache, store
        )
        return [outputs[i] for i in self.cross_layer_indices()], cache

    def patch_vectors(self, states: list[jax.Array], patch_ids: jax.Array, num_patches: int) -> jax.Array:
        """Patch vectors from byte states.

        Args:
          states: `byte_states` output, n_cross x [B, S, D].
          patch_ids: int [B, S] patch of every byte (ids outside [0, P) are ignored).
          num_patches: P.

        Returns:
          [B, P, k * D]; patches without bytes start from exact zeros.
        """
        # Queries start from the max-pooled states of the first cross-attention layer (pooled once,
        # even when cross-attention follows every layer).
        pooled = max_pool_patches(states[0], patch_ids, num_patches)
        return self.slot_vectors(pooled, self.byte_keys_values(states), patch_ids)

    def byte_keys_values(self, states: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
        """Keys and values the patch slots attend, per cross-attention layer.

        Separate from `slot_vectors` so incremental decoding projects each byte once, as it arrives,
        instead of re-projecting a whole patch buffer when the patch closes.

        Args:
          states: `byte_states` output, n_cross x [B, S, D].

        Returns:
          n_cross x (keys, values), each [B, S, H, K].
        """
        return [ca.keys_values(h) for ca, h in zip(self.cross_attn_layers, states)]

    def slot_vectors(
        self, pooled: jax.Array, keys_values: list[tuple[jax.Array, jax.Array]], patch_ids: jax.Array
    ) -> jax.Array:
        """Patch vectors from pooled states and the bytes' keys/values.

        Args:
          pooled: [B, P, D] max-pooled first-cross-layer states of every patch (zeros if empty).
          keys_values: `byte_keys_values` output, n_cross x ([B, S, H, K], [B, S, H, K]).
          patch_ids: int [B, S] patch of every byte (ids outside [0, P) are ignored).

        Returns:
          [B, P, k * D].
        """
        batch, num_patches, dim = pooled.shape
        k = self.config.cross_attn_k
        # Slot r of the projection belongs to patch r // k.
        patches = self.patch_embedding_projection(pooled).reshape(batch, num_patches * k, dim)
        for ca, (keys, values) in zip(self.cross_attn_layers, keys_values):
            # The reference adds the residual twice (inside CrossAttention and again around it).
            patches = 2 * patches + ca.attend(patches, keys, values, patch_ids)
        return patches.reshape(batch, num_patches, k * dim)

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
          embeds: [B, N, D] precomputed byte + hash embeddings (`nn.blt.encoder_input`), or None
            to compute them here.

        Returns:
          (h [B, N, D] byte states of the last layer (no final norm),
           patches [B, P, k * D] patch vectors for the latent transformer).
        """
        h = self.embed(tokens) if embeds is None else embeds
        states, _ = self.byte_states(h, positions, doc_ids)
        return states[-1], self.patch_vectors(states, patch_ids, num_patches)


class LocalDecoder(nn.Module):
    """Cross-attends every byte to the latent output of its decoder patch before each layer (or the
    first one), runs the windowed local stack, and predicts the next byte.

    `slot_keys_values` (once per patch) and `decode` (with a cache, once per byte) are separate so
    incremental decoding projects each patch's slots once.

    Attributes:
      config: the BLT configuration.
      options: how the stack runs (`nn.options`; its stack name: "decoder").
    """

    config: BLTConfig
    options: RunOptions = DEFAULT

    def setup(self):
        cfg, st = self.config, self.config.decoder
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        k, dim = cfg.cross_attn_k, st.dim
        self.patch_embedding_projection = Dense(k * dim, (axes.EMBED, axes.PATCH_SLOTS), cfg.latent.dim**-0.5, dt, pdt)
        n_cross = st.n_layers if cfg.cross_attn_all_layers_decoder else 1
        self.cross_attn_layers = [
            CrossAttention(dim, cfg.cross_attn_heads, k, False, i, st.norm_eps, dt, pdt) for i in range(n_cross)
        ]
        self.layers = stack_blocks(st, "decoder", self.options, dt, pdt)
        self.norm = RMSNorm(st.norm_eps, dt, pdt)
        self.output = Dense(cfg.vocab_size, (axes.EMBED, axes.VOCAB), dim**-0.5, dt, pdt)

    def slot_keys_values(self, latent_out: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Keys/values of the k slots of every patch, per cross-attention layer.

        Args:
          latent_out: [B, P, D_latent] latent transformer outputs.

        Returns:
          n_cross x (keys, values) [B, P*k, H, K].
        """
        batch, num_patches = latent_out.shape[:2]
        k, dim = self.config.cross_attn_k, self.config.decoder.dim
        slots = self.patch_embedding_projection(latent_out).reshape(batch, num_patches * k, dim)
        return [ca.keys_values(slots) for ca in self.cross_attn_layers]

    def decode(
        self,
        h: jax.Array,
        slot_kv: list[tuple[jax.Array, jax.Array]],
        dec_patch_ids: jax.Array,
        positions: jax.Array,
        doc_ids: jax.Array,
        cache: KVCache | None = None,
        store: jax.Array | None = None,
    ):
        """Decodes bytes against projected slots.

        Args:
          h: [B, T, D] the encoder's byte states.
          slot_kv: `slot_keys_values` output.
          dec_patch_ids: int [B, T] decoder patch id q(i) = p(i + 1) - 1 of every byte (indexes the
            patches of slot_kv).
          positions: int [B, T] RoPE positions.
          doc_ids: int [B, T] EOS-delimited document ids.
          cache: the stack's KVCache (incremental use) or None.
          store: bool [B, T], ring caches only: which positions to keep (default all).

        Returns:
          fp32 logits [B, T, V] (position i predicts byte i + 1); with a cache, (logits, new cache).
        """
        st = self.config.decoder
        rope = rope_tables(positions, st)

        def cross(i, x):
            if i >= len(self.cross_attn_layers):
                return x
            ca = self.cross_attn_layers[i]
            return 2 * x + ca.attend(x, *slot_kv[i], dec_patch_ids)  # doubled residual, as in the reference

        outputs, new_cache = run_blocks(
            self.layers, h.astype(self.config.dtype), rope, positions, doc_ids, st.window, cache, store, before=cross
        )
        logits = self.output(self.norm(outputs[-1])).astype(jnp.float32)
        return logits if cache is None else (logits, new_cache)

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
        return self.decode(h, self.slot_keys_values(latent_out), dec_patch_ids, positions, doc_ids)
