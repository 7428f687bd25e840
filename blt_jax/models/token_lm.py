"""The token transformer (a BPE baseline) as a model kind: the entropy LM's module over BPE ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import TokenLMConfig, token_lm_from_dict
from blt_jax.metrics.flops import entropy_lm_forward_flops, stack_attention_flops
from blt_jax.models.base import Batch, ModelKind, StackPath
from blt_jax.nn.entropy_lm import EntropyLM
from blt_jax.nn.options import DEFAULT, RunOptions


class TokenLMKind(ModelKind):
    """A causal transformer over rows of BPE tokens (`data.tokenizer`); no patches, no entropies.

    Its rows hold `row_bytes` tokens, and its batches carry target_bytes (the bytes each target token
    stands for), from which its loss becomes bits per byte comparable with a byte model's.
    """

    name = "token_lm"
    config_class = TokenLMConfig
    description = "a token transformer"
    token_rows = True
    causal_stack = True
    config: TokenLMConfig

    @classmethod
    def config_from_dict(cls, raw: Any, path: str) -> TokenLMConfig:
        return token_lm_from_dict(raw, path)

    def module(self, options: RunOptions = DEFAULT) -> nn.Module:
        return EntropyLM(self.config, options, "token")

    def inputs(self, batch: Batch, embeds: jax.Array | None = None) -> tuple[jax.Array, ...]:
        return (batch["tokens"],)

    def batch_shapes(self, rows: int, row_bytes: int, row_patches: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Token rows of `row_bytes` tokens: ids, next-token targets, mask, and target_bytes float32
        [rows, row_bytes] (bytes of each target token)."""
        shapes = super().batch_shapes(rows, row_bytes, row_patches)
        shapes["target_bytes"] = jax.ShapeDtypeStruct((rows, row_bytes), jnp.float32)
        return shapes

    def scan_stacks(self) -> Mapping[str, StackPath]:
        return {"token": (EntropyLM.STACK_PATH, self.config.stack.n_layers)}

    def training_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        """3 x forward FLOPs per token / bytes per token.

        Args:
          row_bytes: tokens per row (`data.row_bytes` of token rows).
          mean_patch_len: mean bytes per token (what token rows report as their mean patch length).
        """
        per_token = entropy_lm_forward_flops(self.config, row_bytes) / row_bytes
        return 3 * per_token / max(mean_patch_len, 1e-9)

    def self_attention_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        """As `training_flops_per_byte`: rows of `row_bytes` tokens of `mean_patch_len` bytes."""
        per_token = stack_attention_flops(self.config.stack, row_bytes) / row_bytes
        return 3 * per_token / max(mean_patch_len, 1e-9)
