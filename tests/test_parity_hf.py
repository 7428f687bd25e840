"""Live parity with the PyTorch reference: transformers' `BltForCausalLM`, random weights, fp32.

Each configuration builds a fresh HF model on CPU, scales its matrices by 2 (random init is nearly
uniform and would hide bugs), picks an entropy threshold away from every entropy of the test rows,
saves it with `save_pretrained`, loads it with `blt_jax.from_pretrained` and compares.

Why 2 and not 3: the logits are also computed exactly (float64, tests/numpy_blt.py) to check that
the set-up is well-conditioned enough for a 1e-4 comparison to mean something. At x3 the reference's
own fp32 error against float64 reached 1.06e-4 on the 3-layer-decoder configuration (ours: 6.7e-5),
so no implementation could be held to 1e-4 there; at x2 both stay near 1.5e-5 while logits still have
a standard deviation of ~2. The 2-layer entropy LM is well-conditioned at x3 (entropies span 1-4.5
nats), and its exact entropies are checked the same way.

The HF port departs from the reference on EOS document masks and on empty patches in the middle of
a row (blt_spec.md section 11), so these inputs have no EOS before the last position and only
trailing empty patches; our reference semantics there are tested against tests/numpy_blt.py.
"""

import jax
import numpy as np
import numpy_blt
import pytest
import torch
from transformers import BltConfig, BltForCausalLM

import blt_jax
from blt_jax.tokenizer import BOS_ID, EOS_ID

N = 48
SCALE = 2.0
PATCHER_SCALE = 3.0
SELF_ERROR_BUDGET = 5e-5  # each fp32 implementation vs float64 exact logits
CONFIGS = {
    "base": dict(
        k=2,
        d_local=32,
        d_global=64,
        enc_layers=1,
        dec_layers=2,
        heads=4,
        hash_sizes=[3, 4, 5],
        hash_vocab=1021,
        hash_fns=1,
        window=16,
        dec_all=True,
    ),
    # k * d_local = 96 != 64: global input projection; decoder cross-attention in its first layer only.
    "projection_k3": dict(
        k=3,
        d_local=32,
        d_global=64,
        enc_layers=1,
        dec_layers=2,
        heads=4,
        hash_sizes=[3, 4, 5],
        hash_vocab=1021,
        hash_fns=1,
        window=16,
        dec_all=False,
    ),
    # Two encoder layers, four hash sizes with two hash functions (8 tables), 8 local heads.
    "deep_encoder_two_hashes": dict(
        k=2,
        d_local=32,
        d_global=48,
        enc_layers=2,
        dec_layers=3,
        heads=8,
        hash_sizes=[3, 4, 6, 8],
        hash_vocab=30011,
        hash_fns=2,
        window=12,
        dec_all=True,
    ),
}


def hf_config(c):
    local = dict(
        hidden_size=c["d_local"],
        num_attention_heads=c["heads"],
        intermediate_size=96,
        cross_attn_k=c["k"],
        hidden_size_global=c["d_global"],
    )
    return BltConfig(
        vocab_size=260,
        cross_attn_k=c["k"],
        local_attention_window_len=c["window"],
        patch_size=4,
        patching_threshold=1.0,
        encoder_hash_byte_group_size=c["hash_sizes"],
        encoder_hash_byte_group_vocab=c["hash_vocab"],
        encoder_hash_byte_group_nb_functions=c["hash_fns"],
        encoder_config=dict(local, num_hidden_layers=c["enc_layers"], cross_attn_all_layers=False),
        decoder_config=dict(local, num_hidden_layers=c["dec_layers"], cross_attn_all_layers=c["dec_all"]),
        global_config=dict(
            hidden_size=c["d_global"], num_attention_heads=4, num_hidden_layers=2, intermediate_size=4 * c["d_global"]
        ),
        patcher_config=dict(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96, sliding_window=c["window"]
        ),
    )


def make_rows():
    rng = np.random.default_rng(7)
    tokens = rng.integers(4, 260, size=(2, N)).astype(np.int64)
    tokens[:, 0] = BOS_ID
    tokens[1, -1] = EOS_ID  # an EOS at the very end: both semantics agree
    lengths = np.zeros((2, 30), np.int64)
    a = [1, 2, 5, 1, 3, 7, 2, 2, 9, 4, 1, 6, 6]
    b = [1, 1, 1, 4, 4, 5, 3, 3, 3, 3, 2, 8, 11]
    lengths[0, : len(a)], lengths[1, : len(b)] = a, b
    assert (lengths.sum(1) == N + 1).all()
    return tokens, lengths


def hf_entropies(model, tokens):
    with torch.no_grad():
        ent, _, _ = model.model.patcher(torch.tensor(tokens), patch_size=4, threshold=1.0)
    return ent.numpy()


def pick_threshold(entropies):
    """A threshold near the median with no entropy within 2e-3 of it (no decision can flip)."""
    values = np.sort(entropies[:, 1:].ravel())
    gaps = np.diff(values)
    middle = len(values) // 2
    order = np.argsort(np.abs(np.arange(len(gaps)) - middle))
    best = next(i for i in order if gaps[i] > 4e-3)
    return float((values[best] + values[best + 1]) / 2)


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    model = BltForCausalLM(hf_config(CONFIGS[request.param])).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.mul_(PATCHER_SCALE if name.startswith("model.patcher.") else SCALE)
    tokens, _ = make_rows()
    model.config.patching_threshold = pick_threshold(hf_entropies(model, tokens))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    ours = blt_jax.from_pretrained(str(path))  # a directory it has never seen
    return request.param, model, ours


def test_config_read_from_hf(pair):
    name, model, ours = pair
    c, cfg = CONFIGS[name], ours.config
    assert (cfg.cross_attn_k, cfg.encoder.dim, cfg.latent.dim, cfg.encoder.window) == (
        c["k"],
        c["d_local"],
        c["d_global"],
        c["window"],
    )
    assert cfg.has_latent_projection == (c["k"] * c["d_local"] != c["d_global"])
    assert cfg.hash.n_tables == len(c["hash_sizes"]) * c["hash_fns"]
    assert cfg.cross_attn_all_layers_decoder == c["dec_all"]
    assert cfg.patching.threshold == pytest.approx(model.config.patching_threshold)
    assert cfg.entropy_model.stack.window == c["window"] and cfg.entropy_model.stack.rope_theta == 10000.0


def test_logits_match_given_patch_lengths(pair):
    _, model, ours = pair
    tokens, lengths = make_rows()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(tokens), patch_lengths=torch.tensor(lengths), use_cache=False).logits.numpy()
    got = np.asarray(ours.logits(tokens, lengths))
    assert got.shape == ref.shape == (2, N, 260) and got.dtype == np.float32
    assert ref.std() > 1.5  # far from uniform
    params = jax.device_get(ours.params)
    exact = np.stack([numpy_blt.blt_forward(params, ours.config, tokens[r], lengths[r]) for r in range(2)])
    hf_error, our_error = np.abs(ref - exact).max(), np.abs(got - exact).max()
    assert hf_error <= SELF_ERROR_BUDGET, f"set-up too ill-conditioned: reference fp32 error {hf_error:.3g}"
    assert our_error <= SELF_ERROR_BUDGET, f"our fp32 error vs float64: {our_error:.3g}"
    diff = np.abs(got - ref).max()
    assert diff <= 1e-4, f"max |logits diff| = {diff:.3g}"


def test_entropies_match(pair):
    _, model, ours = pair
    tokens, _ = make_rows()
    ref = hf_entropies(model, tokens)
    got = np.asarray(ours.entropies(tokens))
    assert ref.min() < 2.0 < ref.max()  # spread: not a near-uniform model
    params = jax.device_get(ours.entropy_params)
    logits = [numpy_blt.entropy_lm_forward(params, ours.config.entropy_model, tokens[r]) for r in range(2)]
    logp = [
        z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        for z in logits
    ]
    exact = np.stack([-(np.exp(lp) * lp).sum(-1) for lp in logp])
    assert np.abs(ref - exact).max() <= SELF_ERROR_BUDGET and np.abs(got - exact).max() <= SELF_ERROR_BUDGET
    diff = np.abs(got - ref).max()
    assert diff <= 1e-4, f"max |entropy diff| = {diff:.3g}"


def starts_below(lengths, n):
    lengths = np.asarray(lengths)
    begins = np.cumsum(lengths) - lengths
    return sorted(int(b) for b, size in zip(begins, lengths) if size > 0 and b < n)


def test_patch_starts_match(pair):
    _, model, ours = pair
    tokens, _ = make_rows()
    threshold = model.config.patching_threshold
    ours_lengths = np.asarray(ours.patch_lengths(tokens))
    assert ours_lengths.shape == (2, N + 1) and (ours_lengths.sum(1) == N + 1).all()
    for row in range(2):  # one row at a time: HF's patcher pads batched rows oddly
        with torch.no_grad():
            _, hf_lengths, _ = model.model.patcher(
                torch.tensor(tokens[row : row + 1]), patch_size=4, threshold=threshold
            )
        want = starts_below(hf_lengths[0].numpy(), N)
        assert 4 < len(want) < N - 4  # the threshold splits the row into real patches
        assert starts_below(ours_lengths[row], N) == want


def test_end_to_end_with_own_patcher(pair):
    """No patch lengths given: both models patch with their entropy LM, then predict."""
    _, model, ours = pair
    tokens, _ = make_rows()
    for row in range(2):
        with torch.no_grad():
            ref = model(input_ids=torch.tensor(tokens[row : row + 1]), use_cache=False).logits.numpy()
        got = np.asarray(ours.logits(tokens[row : row + 1]))
        diff = np.abs(got - ref).max()
        assert diff <= 1e-4, f"row {row}: max |logits diff| = {diff:.3g}"


def test_export_to_hf_loads_in_transformers_and_round_trips_bit_identical(pair, tmp_path):
    """`blt-jax export SRC DIR --format hf`, typed from a fresh directory with relative paths: HF ->
    ours -> HF gives back every tensor bit for bit, and transformers loads DIR (patcher and threshold
    included) into a model whose logits, patching with its own patcher, equal ours."""
    from safetensors.numpy import load_file
    from user import blt_jax as run

    _, model, ours = pair
    model.save_pretrained(tmp_path / "from_hf")
    result = run("export", "from_hf", "to_hf", "--format", "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "to_hf (Hugging Face layout)" in result.stdout
    original, exported = (
        load_file(str(tmp_path / "from_hf" / "model.safetensors")),
        load_file(str(tmp_path / "to_hf" / "model.safetensors")),
    )
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name

    loaded = BltForCausalLM.from_pretrained(tmp_path / "to_hf").eval()
    assert loaded.config.patching_threshold == pytest.approx(model.config.patching_threshold, abs=0)
    tokens, _ = make_rows()
    for row in range(2):  # rows without an EOS before their end: the two define the same function
        with torch.no_grad():  # transformers' defaults (the export turns its broken cache off)
            ref = loaded(input_ids=torch.tensor(tokens[row : row + 1])).logits.numpy()
        diff = np.abs(np.asarray(ours.logits(tokens[row : row + 1])) - ref).max()
        assert diff <= 1e-4, f"row {row}: max |logits diff| = {diff:.3g}"
