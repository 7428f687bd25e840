"""Analytic model FLOPs (2 per multiply-add of every matmul; embedding lookups count 0).

Attention counts only the (query, key) pairs the mask allows, as MaxText does for causal masks:
a sliding window of W over N positions sees sum_i min(i + 1, W) keys.
"""

from __future__ import annotations

from blt_jax.config import BLTConfig, EntropyLMConfig, StackConfig, TokenLMConfig


def visible_keys(length: int, window: int | None) -> int:
    """Number of allowed (query, key) pairs of a causal (windowed) mask over `length` positions."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def stack_attention_flops(stack: StackConfig, length: int) -> int:
    """Forward FLOPs of a stack's self-attention proper over one row of `length` positions: QK^T and
    PV over all heads and layers (what an attention kernel runs; projections excluded)."""
    return stack.n_layers * 2 * 2 * stack.n_heads * stack.head_dim * visible_keys(length, stack.window)


def stack_forward_flops(stack: StackConfig, length: int) -> int:
    """Forward FLOPs of one row of `length` positions through a stack (projections, FFN, attention)."""
    d, f = stack.dim, stack.ffn_hidden
    width, kv_width = stack.n_heads * stack.head_dim, stack.n_kv_heads * stack.head_dim  # H K and Hkv K
    dense = length * (2 * 2 * d * width + 2 * 2 * d * kv_width + 3 * 2 * d * f)  # q, o; k, v; SwiGLU
    return stack.n_layers * dense + stack_attention_flops(stack, length)


def entropy_lm_forward_flops(config: EntropyLMConfig | TokenLMConfig, length: int) -> int:
    """Forward FLOPs of the entropy LM on one row of `length` bytes, output head included; of a token
    transformer (the same module over a BPE vocabulary), on one row of `length` tokens."""
    return stack_forward_flops(config.stack, length) + length * 2 * config.stack.dim * config.vocab_size


def blt_self_attention_flops_per_byte(config: BLTConfig, row_bytes: int, mean_patch_len: float) -> float:
    """The part of `blt_forward_flops_per_byte` in the self-attention of the three stacks (the
    encoder's and decoder's windows over the bytes, the latent over the patches)."""
    patches = max(1, round(row_bytes / mean_patch_len))
    return (
        stack_attention_flops(config.encoder, row_bytes)
        + stack_attention_flops(config.latent, patches)
        + stack_attention_flops(config.decoder, row_bytes)
    ) / row_bytes


def blt_forward_flops_per_byte(config: BLTConfig, row_bytes: int, mean_patch_len: float) -> float:
    """Analytic forward FLOPs per byte of a BLT, paper-style.

    With N bytes per row and a mean patch length L (P = N / L patches):
      * local encoder: its windowed stack over N bytes, the patch projection (P x d -> k d), and each
        encoder cross-attention (k slots per patch query the L bytes of their patch);
      * latent transformer: its causal stack over P patches (+ the input projection when k d != D),
        i.e. the global FLOPs per patch divided by the mean patch length;
      * local decoder: the patch projection (P x D -> k d), each decoder cross-attention (every byte
        queries the k slots of one patch), its windowed stack over N bytes, and the 260-way head.
    Embedding and hash-table lookups count zero. Training = 3 x forward.
    """
    n, k = row_bytes, config.cross_attn_k
    d, big = config.encoder.dim, config.latent.dim
    patches = n / mean_patch_len
    slots = patches * k

    def cross(queries: float, keys: float, pairs_per_query: float) -> float:
        return 2 * d * d * (2 * queries + 2 * keys) + 2 * 2 * d * queries * pairs_per_query

    encoder_cross = config.encoder.n_layers if config.cross_attn_all_layers_encoder else 1
    decoder_cross = config.decoder.n_layers if config.cross_attn_all_layers_decoder else 1
    encoder = stack_forward_flops(config.encoder, n) + 2 * patches * d * k * d
    encoder += encoder_cross * cross(slots, n, mean_patch_len)
    latent = stack_forward_flops(config.latent, max(1, round(patches)))
    if config.has_latent_projection:
        latent += 2 * patches * config.latent_input_dim * big
    decoder = 2 * patches * big * k * d + decoder_cross * cross(n, slots, k)
    decoder += stack_forward_flops(config.decoder, n) + 2 * n * d * config.vocab_size
    return (encoder + latent + decoder) / n
