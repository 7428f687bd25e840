"""Model semantics on the reference's rules, against the slow NumPy BLT (tests/numpy_blt.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpy_blt
import pytest
from factories import scaled, tiny_blt

from blt_jax.config import EntropyLMConfig, StackConfig
from blt_jax.nn.attention import masked_attention
from blt_jax.nn.blt import BLT
from blt_jax.nn.entropy_lm import EntropyLM
from blt_jax.nn.local import LocalEncoder
from blt_jax.nn.masks import document_ids
from blt_jax.nn.patch_ids import patch_ids_from_lengths
from blt_jax.parallel import LOGICAL_RULES
from blt_jax.params import init_params, logical_axes
from blt_jax.tokenizer import BOS_ID, EOS_ID

N = 40


def make_config(**overrides):
    return tiny_blt(window=8, **overrides)


CONFIGS = {
    "all_layer_encoder": make_config(),
    "projection_k3": make_config(cross_attn_k=3, cross_attn_all_layers_encoder=False, cross_attn_heads=2),
    "decoder_first_layer_only": make_config(cross_attn_all_layers_decoder=False, hash=None),
}


def rows_with_documents():
    """Two rows of several documents each (EOS inside the rows), longer than the window."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260, size=(2, N)).astype(np.int32)
    tokens[0, [0, 13, 14, 30, 31]] = [BOS_ID, EOS_ID, BOS_ID, EOS_ID, BOS_ID]
    tokens[1, [0, 5, 6]] = [BOS_ID, EOS_ID, BOS_ID]
    lengths = np.zeros((2, 24), np.int32)
    a = [1, 3, 2, 5, 1, 1, 4, 6, 2, 3, 1, 8, 4]  # sums to N + 1
    b = [1, 1, 2, 2, 9, 1, 7, 3, 3, 12]
    lengths[0, : len(a)], lengths[1, : len(b)] = a, b
    assert (lengths.sum(1) == N + 1).all()
    return tokens, lengths


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    config = CONFIGS[request.param]
    params = scaled(init_params(config, jax.random.key(1)))
    fn = jax.jit(lambda p, t, lengths: BLT(config).apply({"params": p}, t, lengths))
    return config, params, fn


def test_matches_numpy_reference_semantics(model):
    config, params, fn = model
    tokens, lengths = rows_with_documents()
    ours = np.asarray(fn(params, tokens, lengths))
    assert np.isfinite(ours).all() and ours.std() > 1.0  # far from uniform
    for row in range(2):
        ref = numpy_blt.blt_forward(params, config, tokens[row], lengths[row])
        np.testing.assert_allclose(ours[row], ref, atol=1e-4, rtol=0)


def test_causal_no_leak_from_future_bytes(model):
    config, params, fn = model
    tokens, lengths = rows_with_documents()
    cut = 21
    other = tokens.copy()
    other[:, cut + 1 :] = np.random.default_rng(5).integers(4, 260, size=(2, N - cut - 1))
    a, b = np.asarray(fn(params, tokens, lengths)), np.asarray(fn(params, other, lengths))
    np.testing.assert_array_equal(a[:, : cut + 1], b[:, : cut + 1])
    assert np.abs(a[:, cut + 1 :] - b[:, cut + 1 :]).max() > 1e-3


def test_batch_rows_are_independent(model):
    config, params, fn = model
    tokens, lengths = rows_with_documents()
    both = np.asarray(fn(params, tokens, lengths))
    # Same batch shape, other row changed: this row's computation is untouched, bit for bit.
    changed = tokens.copy()
    changed[1] = np.random.default_rng(9).integers(4, 260, size=N)
    assert np.array_equal(np.asarray(fn(params, changed, lengths))[0], both[0])
    # Batch 1 vs batch 2 compile to different matmul tilings: fp32 round-off only (each is ~1e-5
    # from the float64 NumPy reference), so the parity tolerance applies.
    for row in range(2):
        alone = np.asarray(fn(params, tokens[row : row + 1], lengths[row : row + 1]))[0]
        np.testing.assert_allclose(alone, both[row], atol=1e-4, rtol=0)


def test_jit_equals_eager():
    config = CONFIGS["decoder_first_layer_only"]
    params = scaled(init_params(config, jax.random.key(2)))
    tokens, lengths = rows_with_documents()
    module = BLT(config)
    jitted = np.asarray(jax.jit(module.apply)({"params": params}, tokens, lengths))
    with jax.disable_jit():
        eager = np.asarray(module.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(lengths)))
    # XLA fuses differently under jit: fp32 round-off (~1e-5 here), held to the parity tolerance.
    np.testing.assert_allclose(jitted, eager, atol=1e-4, rtol=0)
    assert np.abs(jitted - eager).max() < 1e-4 * np.abs(jitted).max()


def test_empty_patches_are_exact_zeros_without_nan():
    config = CONFIGS["all_layer_encoder"]
    params = scaled(init_params(config, jax.random.key(3)))
    tokens, lengths = rows_with_documents()
    num = lengths.shape[1]
    patch_ids = patch_ids_from_lengths(lengths, N)
    positions = jnp.broadcast_to(jnp.arange(N), (2, N))

    def encode(p):
        return LocalEncoder(config).apply({"params": p}, tokens, patch_ids, num, positions, document_ids(tokens))

    _, patches = jax.jit(encode)(params["local_encoder"])
    patches = np.asarray(patches)
    # Patches with no real byte: trailing zero-length ones and the final "next byte" patch.
    real = np.asarray(jax.vmap(lambda ids: jnp.zeros(num, bool).at[ids].set(True, mode="drop"))(patch_ids))
    assert (~real).sum() >= 2 * (num - 13)
    assert np.all(patches[~real] == 0.0)
    assert np.all(np.abs(patches[real]).max(-1) > 0)

    def loss(p):
        logits = BLT(config).apply({"params": p}, tokens, lengths)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 7])

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_fully_masked_attention_rows_are_zero_in_value_and_gradient():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 3, 2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.array([[[True, False, True], [False, False, False], [True, True, True]]])
    out = masked_attention(q, k, v, mask)
    assert np.all(np.asarray(out)[0, 1] == 0.0)
    g = jax.grad(lambda q_, k_, v_: masked_attention(q_, k_, v_, mask)[0, 1].sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(np.all(np.asarray(x) == 0.0) for x in g)


def test_entropy_lm_matches_numpy_with_documents_and_window():
    config = EntropyLMConfig(StackConfig(32, 2, 4, 96, rope_theta=10000.0, window=8))
    params = scaled(init_params(config, jax.random.key(4)))
    tokens, _ = rows_with_documents()
    ours = np.asarray(jax.jit(lambda p, t: EntropyLM(config).apply({"params": p}, t))(params, tokens))
    for row in range(2):
        np.testing.assert_allclose(
            ours[row], numpy_blt.entropy_lm_forward(params, config, tokens[row]), atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_parameter_has_logical_axes(name):
    config = CONFIGS[name]
    specs = logical_axes(config)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    known = {logical for logical, _ in LOGICAL_RULES}
    flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_specs) == len(flat_shapes) > 0
    for spec, shape in zip(flat_specs, flat_shapes):
        assert len(spec) == len(shape.shape)
        assert all(name in known for name in spec), spec


def test_boxed_init_carries_names():
    config = CONFIGS["decoder_first_layer_only"]
    boxed = jax.eval_shape(
        BLT(config).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 5), jnp.int32)
    )
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)


def test_long_rows_use_banded_attention_and_match_numpy():
    """130 bytes with a window of 8: the local stacks take the banded path (chunks of 32)."""
    from blt_jax.nn.local_attention import use_banded
    from blt_jax.nn.masks import CausalSpec

    n = 130
    assert use_banded(CausalSpec.self_attention(jnp.zeros((1, n)), jnp.zeros((1, n)), 8), n)
    config = CONFIGS["projection_k3"]
    params = scaled(init_params(config, jax.random.key(6)))
    rng = np.random.default_rng(6)
    tokens = rng.integers(4, 260, size=(1, n)).astype(np.int32)
    tokens[0, [0, 50, 51, 90]] = [BOS_ID, EOS_ID, BOS_ID, EOS_ID]
    lengths = np.zeros((1, 40), np.int32)
    chunks = [1] + [4] * 32 + [2]  # sums to n + 1
    lengths[0, : len(chunks)] = chunks
    ours = np.asarray(
        jax.jit(lambda p, t, lengths: BLT(config).apply({"params": p}, t, lengths))(params, tokens, lengths)
    )
    ref = numpy_blt.blt_forward(params, config, tokens[0], lengths[0])
    np.testing.assert_allclose(ours[0], ref, atol=1e-4, rtol=0)
