"""The entropy byte LM as a model kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from blt_jax.config import EntropyLMConfig, entropy_lm_from_dict
from blt_jax.metrics.flops import entropy_lm_forward_flops, stack_attention_flops
from blt_jax.models.base import Batch, ModelKind, StackPath
from blt_jax.nn.entropy_lm import EntropyLM
from blt_jax.nn.options import DEFAULT, RunOptions


class EntropyLMKind(ModelKind):
    """A plain byte LM over rows of bytes (no patches); it measures entropies for itself."""

    name = "entropy_lm"
    config_class = EntropyLMConfig
    description = "an entropy LM"
    is_patcher = True
    causal_stack = True
    config: EntropyLMConfig

    @classmethod
    def config_from_dict(cls, raw: Any, path: str) -> EntropyLMConfig:
        return entropy_lm_from_dict(raw, path)

    def module(self, options: RunOptions = DEFAULT) -> nn.Module:
        return EntropyLM(self.config, options, "entropy")

    def inputs(self, batch: Batch, embeds: jax.Array | None = None) -> tuple[jax.Array, ...]:
        return (batch["tokens"],)

    def scan_stacks(self) -> Mapping[str, StackPath]:
        return {"entropy": (EntropyLM.STACK_PATH, self.config.stack.n_layers)}

    def training_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        return 3 * entropy_lm_forward_flops(self.config, row_bytes) / row_bytes

    def self_attention_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        return 3 * stack_attention_flops(self.config.stack, row_bytes) / row_bytes

    @property
    def entropy_lm(self) -> EntropyLMConfig:
        return self.config
