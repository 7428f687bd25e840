"""Cached incremental decoding equals the full recompute; sampling rules; the generate facade and CLI.

The reference decodes by re-running patching and the whole model on the full prefix for every byte.
Ours caches every stack; these tests hold it to that recompute (fp32, 1e-4) across hundreds of
bytes: far past the local windows (16 bytes here), across many patches, with documents (EOS) inside
the rows, with patches cut by max_patch_length, and for every patching rule.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from factories import scaled, tiny_blt

from blt_jax import tokenizer
from blt_jax.api import BLTModel
from blt_jax.config import (
    ConfigError,
    PatchingConfig,
    RopeScaling,
    StackConfig,
)
from blt_jax.inference.decode import DecodeEngine
from blt_jax.inference.fused import fuse_projections
from blt_jax.inference.generate import Generator, capacity_for, encode_prompts
from blt_jax.inference.sampling import SamplingConfig, allowed_ids, sample
from blt_jax.nn.patch_ids import starts_from_lengths
from blt_jax.tokenizer import EOS_ID

TOL = 1e-4
WINDOW = 16
TEXT_A = ("The quick brown fox jumps over the lazy dog; then it naps. " * 8)[:330]
TEXT_B = ("Pack my box with five dozen liquor jugs! 0123456789 {}[] " * 8)[:330]


def make_model(patching: PatchingConfig, **overrides) -> BLTModel:
    config = tiny_blt(window=WINDOW, entropy_lm=True, patching=patching, **overrides)
    model = BLTModel.random(config, seed=1)
    return BLTModel(config, scaled(model.params, 2.0), scaled(model.entropy_params, 3.0))


CASES = {
    # Entropy rule (threshold near the median entropy of these texts) with patches capped at 6 bytes,
    # cross-attention after every encoder layer.
    "entropy_max_len": lambda: make_model(PatchingConfig(mode="entropy", threshold=2.6, max_patch_length=6)),
    # Monotonic rule, k = 3 slots with a latent input projection, decoder cross-attention in layer 0 only.
    "monotonic_k3": lambda: make_model(
        PatchingConfig(mode="entropy", threshold=0.2, monotonic=True),
        cross_attn_k=3,
        cross_attn_heads=2,
        cross_attn_all_layers_decoder=False,
    ),
    # Space patching (no entropy LM runs), no hash embeddings, a latent window of 8 patches.
    "space_latent_window": lambda: make_model(
        PatchingConfig(mode="space"), hash=None, latent=StackConfig(64, 2, 4, 192, window=8)
    ),
    # Meta's attn_bias_type="causal": the second document's patches see the first's.
    "space_causal_latent": lambda: make_model(PatchingConfig(mode="space"), latent_mask="causal"),
    # A byteified latent (a Llama's blocks): grouped-query attention, 8 heads of 12 on a width of 64,
    # Llama 3's RoPE scaling, and the teacher's final norm.
    "entropy_byteified_latent": lambda: make_model(
        PatchingConfig(mode="entropy", threshold=2.6),
        latent_norm=True,
        latent=StackConfig(
            64, 2, 8, 192, n_kv_heads=2, head_dim=12, rope_scaling=RopeScaling(factor=8.0, original_max_position=16)
        ),
    ),
}


def rows_with_documents() -> np.ndarray:
    """Two 331-token rows; the second holds an EOS-separated second document."""
    a = tokenizer.encode(TEXT_A, add_eos=False)
    b = tokenizer.encode(TEXT_B, add_eos=False)
    b[150], b[151] = EOS_ID, tokenizer.BOS_ID
    return np.stack([a, b]).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(CASES))
def teacher_forced(request):
    """Per-step logits and patch starts of the cached path fed a fixed text, and the full recompute's."""
    model = CASES[request.param]()
    tokens = rows_with_documents()
    batch, length = tokens.shape
    decoder = DecodeEngine(model.config, capacity=length + 4)
    prefill, step = jax.jit(decoder.prefill), jax.jit(decoder.step, donate_argnums=2)
    first = 7
    state, logits = prefill(model.params, model.entropy_params, jnp.asarray(tokens[:, :first]))
    cached = [np.asarray(logits)]
    for t in range(first, length - 1):
        state, logits = step(model.params, model.entropy_params, state, jnp.asarray(tokens[:, t]))
        cached.append(np.asarray(logits))
    cached = np.stack(cached, axis=1)  # logits of positions first-1 .. length-2
    full = np.asarray(model.logits(tokens))[:, first - 1 : length - 1]
    full_starts = np.asarray(starts_from_lengths(model.patch_lengths(tokens), length + 1))[:, :length]
    return dict(
        model=model,
        cached=cached,
        full=full,
        starts=np.asarray(state.starts)[:, :length],
        full_starts=full_starts,
        n_closed=np.asarray(state.n_closed),
    )


def test_cached_logits_equal_full_recompute(teacher_forced):
    diff = np.abs(teacher_forced["cached"] - teacher_forced["full"])
    assert teacher_forced["cached"].shape[1] >= 300
    assert diff.max() < TOL, (
        f"max |cached - full| = {diff.max():.2e} at step {np.unravel_index(diff.argmax(), diff.shape)}"
    )


def test_cached_patch_boundaries_equal_patching_at_once(teacher_forced):
    starts, full = teacher_forced["starts"], teacher_forced["full_starts"]
    np.testing.assert_array_equal(starts, full)
    n_patches = full.sum(axis=1)
    assert (n_patches > 40).all(), n_patches  # many patches, not one long one
    assert (n_patches < full.shape[1]).all()  # and not one byte each
    # Latent steps ran once per closed patch.
    np.testing.assert_array_equal(teacher_forced["n_closed"], full[:, 1:].sum(axis=1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_prefilled_context_scores_its_continuations_as_full_forwards(case):
    """Contexts of different lengths prefilled in one right-padded batch, each state copied to several
    continuations, then one parallel chunk over every continuation (lm-eval's multiple choice): the
    logits equal a forward over each whole text. The contexts end mid-patch and past the 16-byte
    windows; one continuation crosses an EOS (a new document), one is another text's bytes."""
    model = CASES[case]()
    rows = rows_with_documents()
    ends = [203, 140]  # context lengths; row 1's EOS is at 150
    contexts = np.zeros((2, 224), np.int32)
    for r, n in enumerate(ends):
        contexts[r, :n] = rows[r, :n]
    parents = np.array([0, 0, 1, 1])
    width = 64
    continuations = np.stack(
        [rows[0, 203 : 203 + width], rows[1, 260 : 260 + width], rows[1, 140 : 140 + width], rows[0, 40 : 40 + width]]
    ).astype(np.int32)
    texts = np.zeros((len(parents), max(ends) + width), np.int32)  # right-padded: harmless, all is causal
    for i, (p, c) in enumerate(zip(parents, continuations)):
        texts[i, : ends[p] + width] = np.concatenate([rows[p, : ends[p]], c])
    full = np.asarray(model.logits(texts))

    def score(context_patches, chunk_patches):
        """(logits after each context, chunk logits, patches in each context, chunk patches closed)
        with the given patch budgets (None: enough for any text)."""
        max_patches = None if context_patches is None else context_patches + chunk_patches
        engine = DecodeEngine(model.config, capacity=contexts.shape[1] + width, max_patches=max_patches)

        @jax.jit
        def run(params, entropy_params, contexts, lengths, continuations, parents):
            state, last = engine.prefill(params, entropy_params, contexts, lengths, context_patches)
            patches = state.n_closed + 1
            state = jax.tree_util.tree_map(lambda x: x[parents], state)
            return (last, *engine.chunk_logits(params, entropy_params, state, continuations, chunk_patches), patches)

        last, chunk, closed, patches = (
            np.asarray(x)
            for x in run(
                model.params,
                model.entropy_params,
                jnp.asarray(contexts),
                jnp.asarray(ends, jnp.int32),
                jnp.asarray(continuations),
                jnp.asarray(parents),
            )
        )
        exact = closed < (chunk_patches or width)  # the entries a budget promises
        for i, p in enumerate(parents):
            n = ends[p]
            np.testing.assert_allclose(last[p], full[i, n - 1], atol=TOL, rtol=0)
            np.testing.assert_allclose(
                chunk[i][exact[i]],
                full[i, n : n + width][exact[i]],
                atol=TOL,
                rtol=0,
                err_msg=f"continuation {i} of context {p}",
            )
        assert np.abs(chunk[0] - chunk[1]).max() > 1.0  # different texts were scored, not copies
        return patches, closed

    patches, closed = score(None, None)
    assert (patches > 20).all() and (closed[:, -1] > 4).all()  # many patches, in contexts and chunks
    # Budgets just large enough (the latent then runs over as many patches as there are) change nothing;
    # a chunk budget below the patches of the continuations keeps the entries before they overflow.
    score(int(patches.max()), int(closed[:, -1].max()) + 1)
    score(int(patches.max()), int(closed[:, width // 2].min()) + 1)


@pytest.fixture(scope="module")
def sampled_generation():
    """300 sampled bytes after two prompts of different lengths, with the logits of every choice."""
    model = CASES["entropy_max_len"]()
    prompts = ["Hello there, ", "A rather longer prompt that keeps going"]
    result = model.generate_tokens(
        prompts, max_new_bytes=300, temperature=1.0, top_k=100, seed=5, record_logits=True, stop_at_eos=False
    )
    return model, encode_prompts(prompts), result


def test_generated_logits_equal_full_recompute(sampled_generation):
    model, prompts, result = sampled_generation
    for row, prompt in enumerate(prompts):
        generated = result.tokens[row]
        assert len(generated) == 300
        sequence = np.concatenate([prompt, generated])[None]
        full = np.asarray(model.logits(sequence[:, :-1]))[0, len(prompt) - 1 :]
        np.testing.assert_allclose(result.logits[row], full, atol=TOL, rtol=0)
        full_starts = np.asarray(starts_from_lengths(model.patch_lengths(sequence[:, :-1]), sequence.shape[1]))[0]
        np.testing.assert_array_equal(result.starts[row, : sequence.shape[1]], full_starts[: sequence.shape[1]])


def test_generated_logits_equal_recompute_on_each_prefix(sampled_generation):
    """The full-sequence comparison relies on prefix stability; check it against real prefixes too."""
    model, prompts, result = sampled_generation
    sequence = np.concatenate([prompts[0], result.tokens[0]])
    for n_new in (97, 300):
        prefix = sequence[: len(prompts[0]) + n_new - 1][None]
        logits = np.asarray(model.logits(prefix))[0, -1]
        np.testing.assert_allclose(result.logits[0][n_new - 1], logits, atol=TOL, rtol=0)


def test_sampling_never_emits_invalid_ids():
    logits = jnp.zeros((4, 260)).at[:, :4].set(50.0)  # specials made overwhelmingly likely
    for config in (SamplingConfig(), SamplingConfig(1.0), SamplingConfig(2.0, top_k=3), SamplingConfig(1.0, top_p=0.5)):
        for seed in range(5):
            ids = np.asarray(sample(logits, jax.random.key(seed), config))
            assert ((ids >= 4) | (ids == EOS_ID)).all(), (config, ids)
    assert np.asarray(sample(logits, jax.random.key(0), SamplingConfig())).tolist() == [EOS_ID] * 4
    allowed = np.asarray(allowed_ids(260))
    assert allowed.sum() == 257 and not allowed[[0, 1, 3]].any()


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 260)) * 3, jnp.float32)
    masked = np.where(np.asarray(allowed_ids(260)), np.asarray(logits), -np.inf)
    greedy = np.asarray(sample(logits, jax.random.key(0), SamplingConfig()))
    np.testing.assert_array_equal(greedy, masked.argmax(-1))
    # top_k = 1 and a tiny nucleus both reduce to greedy, whatever the key.
    for seed in range(3):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(np.asarray(sample(logits, key, SamplingConfig(1.0, top_k=1))), greedy)
        np.testing.assert_array_equal(np.asarray(sample(logits, key, SamplingConfig(1.0, top_p=1e-6))), greedy)
    # top_k = 5: every draw is among the 5 most likely allowed ids of its row.
    top5 = np.argsort(-masked, axis=-1)[:, :5]
    draws = np.stack([np.asarray(sample(logits, jax.random.key(s), SamplingConfig(1.5, top_k=5))) for s in range(40)])
    assert all(np.isin(draws[:, r], top5[r]).all() for r in range(3))
    assert len(np.unique(draws[:, 0])) > 1  # it does sample
    # top_p: draws stay inside the nucleus of the tempered distribution.
    probs = np.exp(masked - masked.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, axis=-1)
    draws = np.stack([np.asarray(sample(logits, jax.random.key(s), SamplingConfig(1.0, top_p=0.6))) for s in range(40)])
    for r in range(3):
        mass_before = np.cumsum(probs[r, order[r]]) - probs[r, order[r]]
        nucleus = order[r][mass_before < 0.6]
        assert np.isin(draws[:, r], nucleus).all()
    # The same key gives the same draws.
    a = sample(logits, jax.random.key(9), SamplingConfig(1.0))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(sample(logits, jax.random.key(9), SamplingConfig(1.0))))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-1.0),
        dict(temperature=1.0, top_k=0),
        dict(temperature=1.0, top_p=0.0),
        dict(temperature=1.0, top_p=1.5),
        dict(temperature=0.0, top_k=5),
    ],
)
def test_bad_sampling_configs_fail_fast(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


@pytest.fixture(scope="module")
def small_model():
    return CASES["space_latent_window"]()


def test_generate_facade(small_model):
    text = small_model.generate("Hello", max_new_bytes=12, temperature=0.0)
    assert isinstance(text, str)
    again = small_model.generate("Hello", max_new_bytes=12, temperature=0.0)
    assert text == again  # greedy is deterministic
    result = small_model.generate_tokens("Hello", max_new_bytes=12, stop_at_eos=False)
    assert len(result.tokens[0]) == 12
    assert text == tokenizer.decode(result.tokens[0][: np.argmax(np.append(result.tokens[0] == EOS_ID, True))])
    texts = small_model.generate(["Hi", "A longer prompt here"], max_new_bytes=8, temperature=0.9, top_p=0.9, seed=3)
    assert isinstance(texts, list) and len(texts) == 2
    assert texts == small_model.generate(
        ["Hi", "A longer prompt here"], max_new_bytes=8, temperature=0.9, top_p=0.9, seed=3
    )
    with pytest.raises(ValueError, match="max_new_bytes"):
        small_model.generate("Hi", max_new_bytes=0)
    with pytest.raises(ValueError, match="empty"):
        small_model.generate([np.zeros((0,), np.int32)], max_new_bytes=4)


def nodes_named(tree, name: str) -> list[dict]:
    """Every sub-tree stored under key `name`."""
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += [value] if key == name else nodes_named(value, name)
    return found


def test_decoding_layout_stacks_projections_and_keeps_the_math():
    model = CASES["entropy_max_len"]()
    fused, fused_entropy = fuse_projections(model.params), fuse_projections(model.entropy_params)
    for tree, stacked in ((model.params, fused), (model.entropy_params, fused_entropy)):
        plain_attn, fused_attn = nodes_named(tree, "attention"), nodes_named(stacked, "attention")
        assert len(fused_attn) == len(plain_attn) > 0
        for plain, new in zip(plain_attn, fused_attn):
            assert set(new) == {"wqkv", "wo"} and set(plain) == {"wq", "wk", "wv", "wo"}  # input left as it was
            for i, name in enumerate(("wq", "wk", "wv")):
                np.testing.assert_array_equal(new["wqkv"][:, i], plain[name])
        plain_ffn, fused_ffn = nodes_named(tree, "feed_forward"), nodes_named(stacked, "feed_forward")
        assert len(fused_ffn) == len(plain_ffn) == len(plain_attn)
        for plain, new in zip(plain_ffn, fused_ffn):
            assert set(new) == {"w13", "w2t"}
            np.testing.assert_array_equal(new["w13"][:, 0], plain["w1"])
            np.testing.assert_array_equal(new["w13"][:, 1], plain["w3"])
            np.testing.assert_array_equal(new["w2t"], np.asarray(plain["w2"]).T)
    # Cross-attention keeps its own projections; fusing twice changes nothing more.
    assert (
        "wq" in fused["local_decoder"]["cross_attn_layers_0"] and "wq" in fused["local_encoder"]["cross_attn_layers_1"]
    )
    twice = fuse_projections(fused)
    assert jax.tree_util.tree_structure(twice) == jax.tree_util.tree_structure(fused)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(twice), jax.tree_util.tree_leaves(fused)))
    # The modules run either layout to the same outputs (full parallel forward, entropies included).
    # (The facade checks trees against the reference layout, so this calls its jitted functions.)
    tokens = jnp.asarray(rows_with_documents()[:, :96])
    lengths = model.patch_lengths(tokens)
    np.testing.assert_allclose(
        model._logits_fn(fused, tokens, lengths), model.logits(tokens, lengths), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(model._entropy_fn(fused_entropy, tokens), model.entropies(tokens), atol=1e-5, rtol=0)


def test_generator_refuses_stale_decoding_layout():
    # A generator keeps the stacked layout of the parameters it last saw; other parameters must not
    # decode with it (a user may run one generator over several checkpoints).
    a, b = CASES["entropy_max_len"](), CASES["entropy_max_len"]()
    b = BLTModel(b.config, scaled(b.params, 1.5), b.entropy_params)
    prompt = encode_prompts(["Switching weights: "])
    gen = Generator(a.config, 1, capacity_for(len(prompt[0]), 24), SamplingConfig())
    first = gen.run(a.params, a.entropy_params, prompt, 24, stop_at_eos=False).tokens[0]
    other = gen.run(b.params, b.entropy_params, prompt, 24, stop_at_eos=False).tokens[0]
    again = gen.run(a.params, a.entropy_params, prompt, 24, stop_at_eos=False).tokens[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(
        other, b.generate_tokens("Switching weights: ", 24, temperature=0.0, stop_at_eos=False).tokens[0]
    )


def with_output_kernel(model: BLTModel, fill) -> BLTModel:
    params = jax.tree_util.tree_map(np.asarray, model.params)
    kernel = np.zeros_like(params["local_decoder"]["output"]["kernel"])
    fill(kernel)
    params["local_decoder"]["output"] = {"kernel": kernel}
    return BLTModel(model.config, params)


def test_generation_stops_at_eos(small_model):
    # All logits equal: greedy takes the lowest allowed id, EOS (2), so every row stops at once.
    model = with_output_kernel(small_model, lambda k: None)
    result = model.generate_tokens(["Hello", "Hi"], max_new_bytes=100)
    assert [r.tolist() for r in result.tokens] == [[EOS_ID], [EOS_ID]]
    assert model.generate(["Hello", "Hi"], max_new_bytes=100) == ["", ""]
    assert result.steps <= 16  # the loop notices that every row is done (it asks every 16 steps)


def test_invalid_utf8_is_replaced(small_model):
    # Only 0xFF and 0xC3 can win (whatever the sign of feature 0): never valid UTF-8 in any order.
    def fill(kernel):
        kernel[0, 0xFF + 4], kernel[0, 0xC3 + 4] = 1e3, -1e3

    model = with_output_kernel(small_model, fill)
    result = model.generate_tokens("Hello", max_new_bytes=8)
    assert set(result.tokens[0].tolist()) <= {0xFF + 4, 0xC3 + 4} and len(result.tokens[0]) == 8
    text = model.generate("Hello", max_new_bytes=8)
    assert text and set(text) == {"\ufffd"}


def test_generate_cli(small_model, tmp_path):
    model_dir = str(tmp_path / "model")
    small_model.save(model_dir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    env["JAX_COMPILATION_CACHE_DIR"] = os.environ.get(
        "BLT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/blt_jax/jax_test_cache")
    )
    cmd = [sys.executable, "-m", "blt_jax", "generate", "--checkpoint", model_dir, "--max-new-bytes", "10"]
    out = subprocess.run(cmd + ["--prompt", "Hello"], capture_output=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    expected = small_model.generate("Hello", max_new_bytes=10)
    assert out.stdout.decode("utf-8") == expected + "\n"
    assert b"bytes/s" in out.stderr
    # Prompts from stdin, one per line: one JSON line each, in order.
    out = subprocess.run(
        cmd + ["--prompt-file", "-", "--lines"], input=b"Hello\n\nWorld\n", capture_output=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr.decode()
    lines = [json.loads(x) for x in out.stdout.decode().splitlines()]
    assert [x["prompt"] for x in lines] == ["Hello", "World"]
    assert lines[0]["completion"] == small_model.generate(["Hello", "World"], max_new_bytes=10)[0]
    # Bad use: a clear error, exit code 2.
    out = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    assert out.returncode == 2 and b"--prompt" in out.stderr


def test_sample_rows_gives_each_row_its_own_rule():
    """Continuous batching samples every row by its own rule: greedy rows give `sample`'s argmax, top-k
    and top-p rows draw only among their candidates, and a row's draw depends on its key alone."""
    from blt_jax.inference.sampling import sample_rows

    logits = jax.random.normal(jax.random.key(0), (6, 260)) * 3
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(jnp.arange(6))
    temperature = jnp.array([0.0, 1.0, 1.0, 1.0, 0.7, 0.0])
    top_k = jnp.array([0, 1, 3, 0, 0, 0], jnp.int32)
    top_p = jnp.array([1.0, 1.0, 1.0, 1e-6, 0.5, 1.0])
    greedy = np.asarray(sample(logits, jax.random.key(0), SamplingConfig()))
    for trial in range(20):
        keys_t = jax.vmap(lambda k, trial=trial: jax.random.fold_in(k, trial))(keys)
        got = np.asarray(sample_rows(logits, keys_t, temperature, top_k, top_p))
        assert got[0] == greedy[0] and got[5] == greedy[5]  # greedy rows
        assert got[1] == greedy[1] and got[3] == greedy[3]  # top_k = 1 and a tiny top_p leave the argmax
        masked = np.where(np.asarray(allowed_ids(260)), np.asarray(logits), -np.inf)
        assert got[2] in np.argsort(-masked[2])[:3]  # among the 3 most likely
        probs = np.exp(masked[4] / 0.7 - np.max(masked[4] / 0.7))
        probs /= probs.sum()
        order = np.argsort(-probs)
        nucleus = order[: np.searchsorted(np.cumsum(probs[order]), 0.5) + 1]
        assert got[4] in nucleus
    # A row's draw does not depend on the other rows.
    alone = sample_rows(logits[4:5], keys[4:5], temperature[4:5], top_k[4:5], top_p[4:5])
    assert int(alone[0]) == int(sample_rows(logits, keys, temperature, top_k, top_p)[4])
