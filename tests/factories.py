"""The tiny models the tests build, defined once: a tiny BLT (and its entropy LM) small enough to
compile in seconds on 2 cores, with every feature on (hash n-grams, cross-attention after every
encoder layer, windowed local stacks), and the scaling that makes random outputs peaked.

Tests vary a field with `dataclasses.replace` semantics: `tiny_blt(cross_attn_k=3, hash=None)`.
"""

from __future__ import annotations

import dataclasses

import jax

from blt_jax.config import BLTConfig, EntropyLMConfig, HashConfig, StackConfig


def tiny_stack(dim: int = 32, layers: int = 2, heads: int = 4, ffn: int | None = None, **fields) -> StackConfig:
    """A stack of width `dim` (FFN 3 x dim by default)."""
    return StackConfig(dim, layers, heads, ffn or 3 * dim, **fields)


def tiny_entropy_lm(window: int = 8) -> EntropyLMConfig:
    """The entropy LM: width 32, 2 layers, a sliding window of `window` bytes."""
    return EntropyLMConfig(tiny_stack(32, window=window, rope_theta=10000.0))


def tiny_blt(window: int = 8, entropy_lm: bool = False, **overrides) -> BLTConfig:
    """A BLT of local width 32 and latent width 64 (2 layers each), k = 2 slots, hash n-grams of 3, 4
    and 6 bytes in 509 buckets (2 functions), local windows of `window` bytes; with its entropy LM
    when `entropy_lm`. `overrides` replace fields."""
    base = BLTConfig(
        encoder=tiny_stack(32, window=window),
        latent=tiny_stack(64),
        decoder=tiny_stack(32, window=window),
        cross_attn_k=2,
        cross_attn_all_layers_encoder=True,  # pooling once, then cross-attention after every layer
        hash=HashConfig((3, 4, 6), 509, 2),
        entropy_model=tiny_entropy_lm(window) if entropy_lm else None,
    )
    return dataclasses.replace(base, **overrides)


def scaled(params, factor: float = 3.0):
    """Random init is near uniform; scaling matrices makes outputs peaked (hides fewer bugs)."""
    return jax.tree_util.tree_map(lambda x: x * factor if x.ndim >= 2 else x, params)
