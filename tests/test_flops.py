"""Analytic FLOPs vs XLA's cost analysis of the compiled forward, and MFU peaks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.config import BLTConfig, EntropyLMConfig, HashConfig, StackConfig
from blt_jax.metrics.flops import blt_forward_flops_per_byte, entropy_lm_forward_flops, visible_keys
from blt_jax.metrics.perf import total_peak_flops, tpu_peak
from blt_jax.nn.blt import BLT
from blt_jax.nn.entropy_lm import EntropyLM
from blt_jax.params import abstract_params

N, B = 64, 2


def compiled_flops(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


@pytest.fixture
def dense_attention(monkeypatch):
    """Local attention without loops. XLA's cost analysis counts a while loop's body once, not once
    per iteration, so chunked attention (a scan over heads) would be undercounted several times over;
    dense masked attention scores every (query, key) pair, a superset of what the model needs."""
    from blt_jax.nn import attention

    monkeypatch.setattr(attention, "use_banded", lambda spec, t_len: False)


def test_blt_forward_within_ten_percent_of_compiled(dense_attention):
    """The compiled forward does a little more than the model FLOPs: attention is computed densely
    and masked (the analytic count keeps the causal half), cross-attention scores every (slot, byte)
    pair before masking (analytic: a slot only sees its patch), and XLA counts element-wise work
    (norms, RoPE, softmax) that model FLOPs leave out. Measured: +3.2%."""
    config = BLTConfig(
        encoder=StackConfig(128, 1, 4, 384, window=64),
        latent=StackConfig(256, 2, 4, 768),
        decoder=StackConfig(128, 2, 4, 384, window=64),
        cross_attn_k=2,
        hash=HashConfig((3, 4), 1021, 1),
    )
    lengths = np.array([[1] + [4] * 16] * B, np.int32)
    assert (lengths.sum(1) == N + 1).all()
    compiled = compiled_flops(
        lambda p, t, lengths: BLT(config).apply({"params": p}, t, lengths),
        abstract_params(config),
        jax.ShapeDtypeStruct((B, N), jnp.int32),
        jax.ShapeDtypeStruct(lengths.shape, jnp.int32),
    )
    analytic = blt_forward_flops_per_byte(config, N, N / lengths.shape[1]) * N * B
    assert 1.0 <= compiled / analytic < 1.10, compiled / analytic


def test_entropy_lm_forward_within_ten_percent_of_compiled(dense_attention):
    """As above for the entropy LM. Measured: +2.5%."""
    config = EntropyLMConfig(StackConfig(256, 2, 4, 768, rope_theta=1e4, window=64))
    compiled = compiled_flops(
        lambda p, t: EntropyLM(config).apply({"params": p}, t),
        abstract_params(config),
        jax.ShapeDtypeStruct((B, N), jnp.int32),
    )
    analytic = entropy_lm_forward_flops(config, N) * B
    assert 1.0 <= compiled / analytic < 1.10, compiled / analytic


def test_larger_patches_cost_less_per_byte():
    config = BLTConfig(
        encoder=StackConfig(64, 1, 4, 192, window=512),
        latent=StackConfig(512, 4, 8, 1536),
        decoder=StackConfig(64, 2, 4, 192, window=512),
    )
    costs = [blt_forward_flops_per_byte(config, 4096, length) for length in (2.0, 4.5, 8.0)]
    assert costs[0] > costs[1] > costs[2]


def test_visible_keys():
    assert visible_keys(4, None) == 10 and visible_keys(6, 2) == 1 + 2 * 5
    assert visible_keys(5, 10) == 15


def test_peaks():
    assert tpu_peak("TPU v5 lite") == 197e12 and tpu_peak("TPU v5p") == 459e12 and tpu_peak("TPU v4") == 275e12
    assert tpu_peak("TPU v6 lite") == 918e12 and tpu_peak("not a tpu") is None
    assert total_peak_flops(jax.devices()[:2], override=1e9) == pytest.approx(2e9)
    assert total_peak_flops() > 1e9  # the CPU probe measures something real


def test_self_attention_part_of_each_model_kind():
    """What the attention kernels run, per byte of training (3 x forward): QK^T and PV, 2 x 2 x H x K
    FLOPs per visible (query, key) pair, over every layer of every stack without a cache. The
    distilled BLT adds its teacher's forward over the patches; token rows divide by bytes per token."""
    from blt_jax.config import DistillConfig, TokenLMConfig
    from blt_jax.models import model_kind

    enc, lat, dec = (
        StackConfig(64, 1, 4, 192, window=16),
        StackConfig(128, 3, 8, 384),
        StackConfig(64, 2, 4, 192, window=16),
    )
    blt = BLTConfig(encoder=enc, latent=lat, decoder=dec, cross_attn_k=2)
    n, mean = 64, 4.0  # 16 patches
    pair = lambda stack: 4 * stack.n_heads * stack.head_dim
    # Windows of 16 over 64 bytes: 16 * 17 / 2 + 48 * 16 pairs; the latent: 16 * 17 / 2 (causal).
    local_pairs, latent_pairs = 136 + 768, 136
    per_byte = (pair(enc) * local_pairs + lat.n_layers * pair(lat) * latent_pairs + 2 * pair(dec) * local_pairs) / n
    assert model_kind(blt).self_attention_flops_per_byte(n, mean) == pytest.approx(3 * per_byte)
    distill = DistillConfig(blt=dataclasses.replace(blt, latent_norm=True), teacher_vocab=1000, hidden_layer=2)
    teacher = lat.n_layers * pair(lat) * latent_pairs / n
    assert model_kind(distill).self_attention_flops_per_byte(n, mean) == pytest.approx(3 * per_byte + teacher)
    entropy = EntropyLMConfig(StackConfig(64, 2, 4, 192, window=16))
    assert model_kind(entropy).self_attention_flops_per_byte(n, mean) == pytest.approx(
        3 * 2 * pair(enc) * local_pairs / n
    )
    token = TokenLMConfig(StackConfig(64, 2, 4, 192, window=16), vocab_size=300)
    assert model_kind(token).self_attention_flops_per_byte(n, 4.0) == pytest.approx(
        3 * 2 * pair(enc) * local_pairs / n / 4
    )
    for kind in (blt, distill, entropy, token):  # a part of the whole
        assert (
            0
            < model_kind(kind).self_attention_flops_per_byte(n, mean)
            < model_kind(kind).training_flops_per_byte(n, mean)
        )
