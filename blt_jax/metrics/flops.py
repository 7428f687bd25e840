"""Analytic model FLOPs (2 per multiply-add of every matmul; embedding lookups count 0).

Attention counts only the (query, key) pairs the mask allows, as MaxText does for causal masks:
a sliding window of W over N positions sees sum_i min(i + 1, W) keys.
"""

from __future__ import annotations

from blt_jax.config import EntropyLMConfig, StackConfig


def visible_keys(length: int, window: int | None) -> int:
    """Number of allowed (query, key) pairs of a causal (windowed) mask over `length` positions."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def stack_forward_flops(stack: StackConfig, length: int) -> int:
    """Forward FLOPs of one row of `length` positions through a stack (projections, FFN, attention)."""
    d, f = stack.dim, stack.ffn_hidden
    dense = length * (4 * 2 * d * d + 3 * 2 * d * f)
    attention = 2 * 2 * d * visible_keys(length, stack.window)  # QK^T and PV over all heads
    return stack.n_layers * (dense + attention)


def entropy_lm_forward_flops(config: EntropyLMConfig, length: int) -> int:
    """Forward FLOPs of the entropy LM on one row of `length` bytes, output head included."""
    return stack_forward_flops(config.stack, length) + length * 2 * config.stack.dim * config.vocab_size
