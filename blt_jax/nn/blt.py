"""The Byte Latent Transformer: local encoder -> latent transformer -> local decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import BLTConfig
from blt_jax.nn.latent import LatentTransformer, patch_document_ids
from blt_jax.nn.local import LocalDecoder, LocalEncoder
from blt_jax.nn.masks import document_ids
from blt_jax.nn.options import DEFAULT, RunOptions
from blt_jax.nn.patch_ids import decoder_patch_ids, patch_ids_from_lengths


class BLT(nn.Module):
    """Next-byte logits of rows of bytes grouped into patches.

    Attributes:
      config: the BLT configuration.
    """

    # Parameter path of the latent transformer's blocks, the stack training may scan (`nn.scan`).
    LATENT_PATH: ClassVar[tuple[str, ...]] = ("global_transformer",)

    config: BLTConfig
    options: RunOptions = DEFAULT  # remat per stack, the scanned latent, attention (`nn.options`)

    def setup(self):
        # The attribute names are the parameter paths of the three parts (the reference's names).
        self.local_encoder = LocalEncoder(self.config, self.options)
        self.global_transformer = LatentTransformer(self.config, self.options)
        self.local_decoder = LocalDecoder(self.config, self.options)

    def __call__(
        self, tokens: jax.Array, patch_lengths: jax.Array, embeds: jax.Array | None = None, tap: int | None = None
    ):
        """Forward pass.

        Args:
          tokens: int [B, N] token ids (bytes + 4; 0 BOE/pad, 1 BOS, 2 EOS).
          patch_lengths: int [B, P], summing to N + 1 per row, first patch of length 1, trailing
            zeros for unused patches.
          embeds: optional precomputed encoder input [B, N, D] (`encoder_input`).
          tap: also return the latent states after this block (1-based) and the patch documents
            (byteification: `nn.distill`).

        Returns:
          fp32 logits [B, N, V]; position i predicts token i + 1. With `tap`: (logits, latent states
          [B, P, D_latent] after block `tap`, int [B, P] patch documents).
        """
        batch, length = tokens.shape
        num_patches = patch_lengths.shape[1]
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        docs = document_ids(tokens)
        patch_ids = patch_ids_from_lengths(patch_lengths, length)
        h, patches = self.local_encoder(tokens, patch_ids, num_patches, positions, docs, embeds)
        patch_docs = patch_document_ids(tokens, patch_ids, num_patches)
        latent = self.global_transformer(patches, patch_docs, tap=tap)
        latent, tapped = latent if tap is not None else (latent, None)
        dec_ids = decoder_patch_ids(patch_lengths, length)
        logits = self.local_decoder(h, latent, dec_ids, positions, docs)
        return logits if tap is None else (logits, tapped, patch_docs)

    def latent_of_embeddings(self, embeds: jax.Array, patch_docs: jax.Array, tap: int):
        """The latent transformer over latent-wide inputs (a teacher's token embeddings [B, P, D_latent])
        -> (final states, states after block `tap`), each [B, P, D_latent]."""
        return self.global_transformer(embeds, patch_docs, embedded=True, tap=tap)

    def latent(self, *args):
        """`LatentTransformer(*args)`: the latent transformer alone (incremental decoding runs the parts
        one at a time; the local encoder's and decoder's methods it calls through `method=`)."""
        return self.global_transformer(*args)


# The local encoder's embedding tables: its input is computed from them alone (`LocalEncoder.embed`).
_ENCODER = "local_encoder"
_EMBEDDING_TABLES = ("tok_embeddings", "hash_embeddings")


def split_embedding_params(params: Mapping) -> tuple[dict, dict]:
    """(the byte and hash embedding tables of the local encoder, every other BLT parameter)."""
    encoder = dict(params[_ENCODER])
    tables = {key: encoder.pop(key) for key in _EMBEDDING_TABLES if key in encoder}
    return tables, {**params, _ENCODER: encoder}


def merge_embedding_params(tables: Mapping, rest: Mapping) -> dict:
    """Inverse of `split_embedding_params`."""
    return {**rest, _ENCODER: {**rest[_ENCODER], **tables}}


def encoder_input(config: BLTConfig, tables: Mapping, tokens: jax.Array) -> jax.Array:
    """The local encoder's input, byte + hash n-gram embeddings [B, N, D] of tokens int [B, N], from
    the tables of `split_embedding_params`: what the forward pass takes as `embeds`."""
    return LocalEncoder(config).apply({"params": tables}, tokens, method=LocalEncoder.embed)
