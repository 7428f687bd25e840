"""The Byte Latent Transformer as a model kind."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import BLTConfig, EntropyLMConfig, PatchingConfig, blt_from_dict
from blt_jax.metrics.flops import blt_forward_flops_per_byte, blt_self_attention_flops_per_byte
from blt_jax.models.base import Batch, EncoderInput, ModelKind, StackPath
from blt_jax.nn.blt import BLT, encoder_input, merge_embedding_params, split_embedding_params
from blt_jax.nn.options import DEFAULT, RunOptions


class _BLTEncoderInput(EncoderInput):
    """Byte + hash n-gram embeddings of the local encoder."""

    def __init__(self, config: BLTConfig):
        self.config = config

    def split(self, params: Mapping) -> tuple[dict, dict]:
        return split_embedding_params(params)

    def merge(self, tables: Mapping, rest: Mapping) -> dict:
        return merge_embedding_params(tables, rest)

    def __call__(self, tables: Mapping, tokens: jax.Array) -> jax.Array:
        return encoder_input(self.config, tables, tokens)


class BLTKind(ModelKind):
    """Rows of bytes cut into patches: batches carry `patch_lengths` [B, P]."""

    name = "blt"
    config_class = BLTConfig
    description = "a BLT"
    config: BLTConfig

    @classmethod
    def config_from_dict(cls, raw: Any, path: str) -> BLTConfig:
        return blt_from_dict(raw, path)

    def module(self, options: RunOptions = DEFAULT) -> nn.Module:
        return BLT(self.config, options)

    def inputs(self, batch: Batch, embeds: jax.Array | None = None) -> tuple[jax.Array, ...]:
        return (batch["tokens"], batch["patch_lengths"], embeds)

    def batch_shapes(self, rows: int, row_bytes: int, row_patches: int) -> dict[str, jax.ShapeDtypeStruct]:
        shapes = super().batch_shapes(rows, row_bytes, row_patches)
        return {**shapes, "patch_lengths": jax.ShapeDtypeStruct((rows, row_patches), jnp.int32)}

    def scan_stacks(self) -> Mapping[str, StackPath]:
        return {"latent": (BLT.LATENT_PATH, self.config.latent.n_layers)}

    def training_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        return 3 * blt_forward_flops_per_byte(self.config, row_bytes, mean_patch_len)

    def self_attention_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        return 3 * blt_self_attention_flops_per_byte(self.config, row_bytes, mean_patch_len)

    @property
    def patching(self) -> PatchingConfig:
        return self.config.patching

    @property
    def entropy_lm(self) -> EntropyLMConfig | None:
        return self.config.entropy_model

    @property
    def companions(self) -> dict[str, Any]:
        model = self.config.entropy_model
        return {} if model is None else {"entropy model (separate)": model}

    def with_patching(self, patching: PatchingConfig, entropy_lm: EntropyLMConfig | None) -> BLTConfig:
        return dataclasses.replace(self.config, patching=patching, entropy_model=entropy_lm)

    def encoder_input(self) -> EncoderInput:
        return _BLTEncoderInput(self.config)
