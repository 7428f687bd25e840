"""Splash attention (Pallas kernels, interpret mode on this CPU) against the dense path: the kernel
wrapper on its own, under a device mesh, and every stack of a BLT and an entropy LM, forward and
gradients; the switch itself (`attention_impl`) as a run-time option that never reaches a model's
configuration."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.config import ConfigError
from blt_jax.nn.attention import masked_attention
from blt_jax.nn.masks import CausalSpec
from blt_jax.nn.options import RunOptions
from blt_jax.nn.splash import block_sizes, self_attention

SPLASH = RunOptions(attention="splash", splash_block_q=128, splash_block_kv=128)
DENSE = RunOptions(attention="dense")
FORWARD_TOL, GRAD_TOL = 1e-5, 1e-4


def _inputs(batch, length, heads, head_dim, ends, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32) for _ in range(3))
    docs = np.zeros((batch, length), np.int32)
    for b, row_ends in enumerate(ends):  # an EOS at each end: the next document starts after it
        for end in row_ends:
            docs[b, end + 1 :] += 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    return q, k, v, jnp.asarray(positions), jnp.asarray(docs)


@pytest.mark.parametrize(
    "length,head_dim,window,ends",
    [
        (200, 64, 48, [[60, 130], [199]]),  # a window shorter than the documents; a row not a multiple of 128
        (256, 128, 512, [[30], [100, 101]]),  # a window longer than the row: causal; a one-byte document
        (160, 64, None, [[], [80]]),  # no window (the latent)
    ],
)
def test_kernel_equals_dense_attention_forward_and_gradients(length, head_dim, window, ends):
    q, k, v, positions, docs = _inputs(2, length, 2, head_dim, ends)
    spec = CausalSpec.self_attention(positions, docs, window)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    dense = lambda q, k, v: masked_attention(q, k, v, spec.dense())
    kernel = lambda q, k, v: self_attention(q, k, v, spec, SPLASH)
    np.testing.assert_allclose(jax.jit(kernel)(q, k, v), dense(q, k, v), atol=FORWARD_TOL, rtol=0)
    got = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=GRAD_TOL, rtol=0)


def test_block_sizes_pad_rows_to_whole_blocks():
    options = RunOptions(attention="splash", splash_block_q=512, splash_block_kv=256)
    assert block_sizes(200, options)[0] == 256  # one block of the padded row
    padded, sizes = block_sizes(1000, options)
    assert padded == 1024 and (sizes.block_q, sizes.block_kv) == (512, 256)
    assert block_sizes(4096, options)[0] == 4096
    uneven = RunOptions(attention="splash", splash_block_q=384, splash_block_kv=512)
    padded, sizes = block_sizes(1000, uneven)
    assert padded == 1536 and padded % sizes.block_q == 0 and padded % sizes.block_kv == 0
    for bad in (dict(attention="flash"), dict(splash_block_q=100)):
        with pytest.raises(ConfigError):
            RunOptions(**bad)


def test_kernel_runs_per_shard_under_a_mesh():
    """Rows over the batch axes and heads over the tensor axis of a 2 x 2 x 2 mesh (`shard_map`):
    the same values as the dense path, and the output sharded like the input."""
    import flax.linen as nn

    from blt_jax.parallel import LOGICAL_RULES, MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    q, k, v, positions, docs = _inputs(4, 128, 4, 64, [[40], [], [127], [10, 90]])
    spec = CausalSpec.self_attention(positions, docs, 32)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None))
    run = jax.jit(lambda q, k, v: self_attention(q, k, v, spec, SPLASH))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        placed = [jax.device_put(x, rows) for x in (q, k, v)]
        out = run(*placed)
        program = jax.make_jaxpr(run)(*placed)
    np.testing.assert_allclose(out, masked_attention(q, k, v, spec.dense()), atol=FORWARD_TOL, rtol=0)
    assert out.sharding.is_equivalent_to(rows, 4)
    assert _count_kernels(program.jaxpr, "shard_map") == 1 and _count_kernels(program.jaxpr) == 1
    # Three heads do not split over the tensor axis: they stay whole on each shard, the rows still split.
    q3, k3, v3, positions3, docs3 = _inputs(4, 128, 3, 64, [[40], [], [127], [10, 90]])
    spec3 = CausalSpec.self_attention(positions3, docs3, 32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        out3 = jax.jit(lambda q, k, v: self_attention(q, k, v, spec3, SPLASH))(q3, k3, v3)
    np.testing.assert_allclose(out3, masked_attention(q3, k3, v3, spec3.dense()), atol=FORWARD_TOL, rtol=0)


def _blt(latent_mask, local_window, head_dim):
    from blt_jax.config import BLTConfig, HashConfig, StackConfig

    local = StackConfig(2 * head_dim, 1, 2, 96, window=local_window)
    return BLTConfig(
        encoder=local,
        latent=StackConfig(2 * head_dim, 2, 2, 192),
        decoder=local,
        cross_attn_k=1,
        hash=HashConfig((3,), 257),
        latent_mask=latent_mask,
    )


def _rows(length=200, patches=80):
    """Two rows of several documents (EOS inside), patches of 1 to 6 bytes, empty ones at the end."""
    from blt_jax.tokenizer import BOS_ID, EOS_ID

    rng = np.random.default_rng(1)
    tokens = rng.integers(4, 260, size=(2, length)).astype(np.int32)
    tokens[0, [0, 40, 41, 150, 151]] = [BOS_ID, EOS_ID, BOS_ID, EOS_ID, BOS_ID]
    tokens[1, [0, 99, 100]] = [BOS_ID, EOS_ID, BOS_ID]
    lengths = np.zeros((2, patches), np.int32)
    for row in range(2):
        sizes, left = [1], length
        while left > 0:
            sizes.append(min(left, int(rng.integers(1, 7))))
            left -= sizes[-1]
        lengths[row, : len(sizes)] = sizes
    assert (lengths.sum(1) == length + 1).all() and (lengths[:, -1] == 0).all()  # trailing empty patches
    return jnp.asarray(tokens), jnp.asarray(lengths)


CASES = [
    ("block_causal", 24, 64),  # windows shorter than a document
    ("causal", 512, 128),  # a window longer than the row
]


def _loss_and_grads(config, params, options, tokens, lengths):
    from blt_jax.models import model_kind

    module = model_kind(config).module(options)
    targets = jnp.roll(tokens, -1, axis=1)

    def loss(p):
        logits = module.apply({"params": p}, tokens, lengths)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits), grads


def _count_kernels(jaxpr, primitive: str = "pallas_call") -> int:
    """Calls of a primitive (Pallas kernels by default) in a program, sub-programs included (each
    call site once; a kernel's own body is not searched)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == primitive
        if eqn.primitive.name == "pallas_call":
            continue
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _count_kernels(inner, primitive)
    return count


def _kernel_calls(config, params, options, tokens, lengths) -> int:
    """Pallas kernels in the forward program (the kernel really runs, not the dense fallback)."""
    from blt_jax.models import model_kind

    module = model_kind(config).module(options)
    return _count_kernels(jax.make_jaxpr(lambda p: module.apply({"params": p}, tokens, lengths))(params).jaxpr)


@pytest.mark.parametrize("latent_mask,local_window,head_dim", CASES)
def test_blt_logits_and_gradients_equal_the_dense_path(latent_mask, local_window, head_dim):
    """Every self-attention of a BLT (encoder, latent, decoder) through the kernel: logits within
    1e-5 and every parameter's gradient within 1e-4 of the dense model's."""
    from blt_jax.params import init_params

    config = _blt(latent_mask, local_window, head_dim)
    params = init_params(config, jax.random.key(0))
    tokens, lengths = _rows()
    dense, dense_grads = _loss_and_grads(config, params, DENSE, tokens, lengths)
    kernel, kernel_grads = _loss_and_grads(config, params, SPLASH, tokens, lengths)
    np.testing.assert_allclose(kernel, dense, atol=FORWARD_TOL, rtol=0)
    assert _kernel_calls(config, params, SPLASH, tokens, lengths) == 4  # encoder, 2 latent, decoder layers
    assert _kernel_calls(config, params, DENSE, tokens, lengths) == 0
    want = dict(jax.tree_util.tree_leaves_with_path(dense_grads))
    for path, grad in jax.tree_util.tree_leaves_with_path(kernel_grads):
        np.testing.assert_allclose(grad, want[path], atol=GRAD_TOL, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("latent_mask,local_window,head_dim", CASES)
def test_blt_through_the_kernel_is_as_close_to_float64_as_dense(latent_mask, local_window, head_dim):
    """With weights scaled up (peaked outputs, logits up to ~9), both fp32 paths sit ~3-4e-5 from the
    NumPy float64 BLT, apart from each other by rounding alone: the kernel's error is the dense
    path's to within 1e-5."""
    import numpy_blt

    from blt_jax.params import init_params

    config = _blt(latent_mask, local_window, head_dim)
    params = jax.tree_util.tree_map(lambda x: x * 2.0 if x.ndim >= 2 else x, init_params(config, jax.random.key(0)))
    tokens, lengths = _rows()
    dense, _ = _loss_and_grads(config, params, DENSE, tokens, lengths)
    kernel, _ = _loss_and_grads(config, params, SPLASH, tokens, lengths)
    for row in range(2):
        exact = numpy_blt.blt_forward(params, config, np.asarray(tokens[row]), np.asarray(lengths[row]))
        dense_error, kernel_error = np.abs(dense[row] - exact).max(), np.abs(kernel[row] - exact).max()
        assert kernel_error <= dense_error + FORWARD_TOL, (row, kernel_error, dense_error)


def test_entropy_lm_logits_equal_the_dense_path():
    from blt_jax.config import EntropyLMConfig, StackConfig
    from blt_jax.nn.entropy_lm import EntropyLM
    from blt_jax.params import init_params

    config = EntropyLMConfig(StackConfig(128, 2, 2, 192, window=48))
    params = init_params(config, jax.random.key(2))
    tokens, _ = _rows()
    dense = EntropyLM(config, DENSE).apply({"params": params}, tokens)
    kernel = jax.jit(lambda p, t: EntropyLM(config, SPLASH).apply({"params": p}, t))(params, tokens)
    np.testing.assert_allclose(kernel, dense, atol=FORWARD_TOL, rtol=0)
    program = jax.make_jaxpr(lambda p: EntropyLM(config, SPLASH).apply({"params": p}, tokens))(params)
    assert _count_kernels(program.jaxpr) == 2


def test_attention_impl_is_a_run_option_that_never_reaches_the_model(tmp_path):
    """As a user runs it, from a fresh directory: a bad value is refused in one line; a run trained
    with splash resumes with dense attention (the two share checkpoints); its configuration keeps the
    choice, its export does not; from_pretrained takes it per load."""
    import json
    import shutil

    from user import TINY, blt_jax

    import blt_jax as api

    shutil.copy(TINY, tmp_path / "tiny.py")
    common = [
        "train",
        "--config",
        "tiny.py",
        "--workdir",
        "run",
        "--noprogress",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=2",
        "--config.train.warmup_steps=1",
    ]
    bad = blt_jax(*common, "--config.model.attention_impl=flash", cwd=tmp_path)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "model.attention_impl: must be one of auto, dense, splash, got 'flash'" in lines[0]

    trained = blt_jax(*common, "--config.model.attention_impl=splash", "--config.train.steps=2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["attention_impl"] == "splash"
    resumed = blt_jax(*common, "--config.model.attention_impl=dense", "--config.train.steps=4", cwd=tmp_path)
    assert resumed.returncode == 0 and "resumed from step 2" in resumed.stderr, resumed.stderr[-2000:]

    exported = blt_jax("export", "run", "exported", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "attention_impl" not in (tmp_path / "exported" / "blt_jax.json").read_text()
    tokens = np.array([[1] + list(b"splash and dense agree") + [2]], np.int32) + np.array([0] + [4] * 22 + [0])
    dense = api.from_pretrained(str(tmp_path / "exported"), attention_impl="dense")
    kernel = api.from_pretrained(str(tmp_path / "exported"), attention_impl="splash")
    np.testing.assert_allclose(kernel.logits(tokens), dense.logits(tokens), atol=FORWARD_TOL, rtol=0)
    with pytest.raises(ConfigError, match="attention_impl: must be one of"):
        api.from_pretrained(str(tmp_path / "exported"), attention_impl="flash")


def test_splash_cross_attention_of_the_benchmark_equals_the_gather_path():
    """experiments/bench_cross_attention.py compares the cross-attention the model runs (gather by patch
    groups) with splash under a full mask and segment ids; its figures mean something only if the two
    compute the same: forward and gradients, with empty patches and bytes that read no patch."""
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "bench_cross_attention.py"
    )
    spec = importlib.util.spec_from_file_location("bench_cross_attention", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.check_equal() < 1e-5
