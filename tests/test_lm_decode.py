"""The cached decoding of plain causal LMs (`inference.lm_decode`): prefill + steps give the logits of
one parallel forward over the whole text, for a token LM (grouped-query attention, tied embeddings,
documents split at EOS, or none) and a windowed byte LM whose ring cache wraps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.config import EntropyLMConfig, StackConfig, TokenLMConfig
from blt_jax.inference.lm_decode import LMDecodeEngine
from blt_jax.nn.entropy_lm import EntropyLM
from blt_jax.params import init_params

CONFIGS = {
    "token_gqa_tied_eos": TokenLMConfig(
        StackConfig(32, 2, 4, 64, n_kv_heads=2, head_dim=8), vocab_size=300, tie_embeddings=True, eos_id=2
    ),
    "token_no_eos": TokenLMConfig(StackConfig(32, 2, 4, 64), vocab_size=300, eos_id=None),
    "byte_lm_window": EntropyLMConfig(stack=StackConfig(32, 2, 4, 64, rope_theta=10000.0, window=8)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_then_steps_give_the_full_forward_logits(name):
    config = CONFIGS[name]
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    total, vocab = 28, min(config.vocab_size, 260)
    tokens = rng.integers(4, vocab, size=(3, total)).astype(np.int32)
    tokens[:, 0] = 1
    tokens[1, 11] = 2  # an EOS in a prefill: a new document starts after it
    tokens[0, 7] = 2  # and one consumed by a step
    lengths = np.array([5, 12, 9], np.int32)  # rows prefilled to different lengths, then stepped
    full = np.asarray(EntropyLM(config).apply({"params": params}, jnp.asarray(tokens)))  # [B, N, V]

    engine = LMDecodeEngine(config, capacity=32)
    prefix = np.where(np.arange(12)[None] < lengths[:, None], tokens[:, :12], 0)
    state, logits = jax.jit(engine.prefill)(params, None, jnp.asarray(prefix), jnp.asarray(lengths))
    for b in range(3):
        np.testing.assert_allclose(np.asarray(logits[b]), full[b, lengths[b] - 1], rtol=2e-5, atol=2e-5)
    step = jax.jit(engine.step)
    t = lengths.copy()
    for _ in range(total - 12):
        state, logits = step(params, None, state, jnp.asarray(tokens[np.arange(3), t]))
        for b in range(3):
            np.testing.assert_allclose(
                np.asarray(logits[b]), full[b, t[b]], rtol=2e-5, atol=2e-5, err_msg=f"row {b}, position {t[b]}"
            )
        t += 1
    np.testing.assert_array_equal(np.asarray(state.t), t)
