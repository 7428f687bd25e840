"""Checkpoint formats: HF errors, Meta layout, our own format, and the facade's input checks."""

import builtins
import json
import os

import jax
import numpy as np
import pytest
import torch
from transformers import BltConfig, BltForCausalLM

import blt_jax
from blt_jax.convert.hf import hf_name
from blt_jax.convert.layout import WeightError, blt_entries, entropy_entries, to_torch
from blt_jax.convert.safetensors_io import read_safetensors, write_safetensors

N = 20


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(1)
    local = dict(hidden_size=32, num_attention_heads=4, intermediate_size=96, cross_attn_k=2, hidden_size_global=48)
    config = BltConfig(
        cross_attn_k=2,
        local_attention_window_len=8,
        patch_size=4,
        patching_threshold=3.0,
        encoder_hash_byte_group_size=[3, 5],
        encoder_hash_byte_group_vocab=211,
        encoder_hash_byte_group_nb_functions=1,
        encoder_config=dict(local, num_hidden_layers=1),
        decoder_config=dict(local, num_hidden_layers=2),
        global_config=dict(hidden_size=48, num_attention_heads=4, num_hidden_layers=1, intermediate_size=128),
        patcher_config=dict(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=96, sliding_window=8
        ),
    )
    model = BltForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def loaded(hf_dir):
    return blt_jax.from_pretrained(hf_dir)


def rows():
    tokens = np.random.default_rng(0).integers(4, 260, size=(2, N)).astype(np.int32)
    tokens[:, 0] = 1
    lengths = np.array([[1, 4, 4, 4, 4, 4, 0], [1, 2, 9, 3, 6, 0, 0]], np.int32)
    return tokens, lengths


# ---- Hugging Face layout errors ----------------------------------------------------------------


def rewrite(src, dst, edit):
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = {k: np.array(v) for k, v in read_safetensors(os.path.join(src, "model.safetensors")).items()}
    edit(tensors)
    write_safetensors(os.path.join(dst, "model.safetensors"), tensors)
    return dst


def test_bad_tensors_are_each_named(hf_dir, tmp_path):
    def edit(t):
        del t["model.local_decoder.norm.weight"]
        t["model.local_encoder.extra_thing.weight"] = np.zeros((3,), np.float32)
        t["model.global_transformer.layers.0.mlp.up_proj.weight"] = np.zeros((7, 48), np.float32)
        del t["model.patcher.norm.weight"]

    bad = rewrite(hf_dir, str(tmp_path / "bad"), edit)
    with pytest.raises(WeightError) as info:
        blt_jax.from_pretrained(bad)
    message = str(info.value)
    assert "missing tensor model.local_decoder.norm.weight" not in message  # reported in reference names
    assert "missing tensor local_decoder.norm.weight (expected shape (32,))" in message
    assert "unexpected tensor model.local_encoder.extra_thing.weight (3,)" in message
    assert "global_transformer.layers.0.feed_forward.w3.weight has shape (7, 48), expected (128, 48)" in message


def test_bad_patcher_tensor_is_named(hf_dir, tmp_path):
    bad = rewrite(hf_dir, str(tmp_path / "bad_patcher"), lambda t: t.pop("model.patcher.norm.weight"))
    with pytest.raises(WeightError, match=r"(?s)\(patcher\).*missing tensor norm\.weight \(expected shape \(32,\)\)"):
        blt_jax.from_pretrained(bad)


def test_bf16_checkpoint_loads(hf_dir, tmp_path, loaded):
    import ml_dtypes

    def to_bf16(t):
        for k in t:
            t[k] = t[k].astype(ml_dtypes.bfloat16)

    model = blt_jax.from_pretrained(rewrite(hf_dir, str(tmp_path / "bf16"), to_bf16))
    ref = jax.device_get(loaded.params)["local_decoder"]["output"]["kernel"]
    got = jax.device_get(model.params)["local_decoder"]["output"]["kernel"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-3)


def test_load_in_bfloat16(hf_dir, loaded):
    import ml_dtypes

    half = blt_jax.from_pretrained(hf_dir, dtype=ml_dtypes.bfloat16)
    kernel = half.params["local_decoder"]["output"]["kernel"]
    assert kernel.dtype == ml_dtypes.bfloat16
    tokens, lengths = rows()
    ref = np.asarray(loaded.logits(tokens, lengths))
    np.testing.assert_allclose(np.asarray(half.logits(tokens, lengths)), ref, atol=0.05, rtol=0.02)


def test_unknown_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="not a model directory.*consolidated.pth"):
        blt_jax.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        blt_jax.from_pretrained(str(tmp_path / "missing"))


# ---- Meta layout -------------------------------------------------------------------------------


def stack_args(stack):
    return dict(dim=stack.dim, n_layers=stack.n_layers, n_heads=stack.n_heads)


def write_meta(directory, model):
    """Writes `model` as Meta's release does: params.json (training args) + consolidated.pth."""
    cfg = model.config
    blt_dir, ent_dir = os.path.join(directory, "blt"), os.path.join(directory, "entropy_model")
    os.makedirs(blt_dir), os.makedirs(ent_dir)
    params, ent_params = jax.device_get(model.params), jax.device_get(model.entropy_params)

    def state(entries, tree):
        out = {}
        for e in entries:
            value = tree
            for key in e.path:
                value = value[key]
            value = value[e.index] if e.kind == "hash" else value
            out[e.name] = torch.from_numpy(np.array(to_torch(e.kind, np.asarray(value)), copy=True)).to(torch.bfloat16)
        return out

    args = dict(
        dim_local_encoder=cfg.encoder.dim,
        n_layers_local_encoder=cfg.encoder.n_layers,
        n_heads_local_encoder=cfg.encoder.n_heads,
        dim_local_decoder=cfg.decoder.dim,
        n_layers_local_decoder=cfg.decoder.n_layers,
        n_heads_local_decoder=cfg.decoder.n_heads,
        dim_global=cfg.latent.dim,
        n_layers_global=cfg.latent.n_layers,
        n_heads_global=cfg.latent.n_heads,
        cross_attn_encoder=True,
        cross_attn_decoder=True,
        cross_attn_k=cfg.cross_attn_k,
        cross_attn_nheads=cfg.cross_attn_heads,
        cross_attn_all_layers_encoder=False,
        cross_attn_all_layers_decoder=True,
        cross_attn_init_by_pooling=True,
        downsampling_by_pooling="max",
        local_attention_window_len=cfg.encoder.window,
        rope_theta=500000.0,
        encoder_hash_byte_group_size=",".join(map(str, cfg.hash.group_sizes)),
        encoder_hash_byte_group_vocab=cfg.hash.vocab,
        encoder_hash_byte_group_nb_functions=cfg.hash.n_functions,
        patching_mode="entropy",
        patching_threshold=cfg.patching.threshold,
        vocab_size=260,
        norm_eps=1e-5,
        multiple_of=32,
        ffn_dim_multiplier=None,
    )
    # The HF config stores FFN widths directly; multiple_of=32 reproduces 96 and 128 here.
    assert cfg.encoder.ffn_hidden == 96 and cfg.latent.ffn_hidden == 128
    with open(os.path.join(blt_dir, "params.json"), "w") as f:
        json.dump({"name": "blt_test", "model": args, "data": {"patcher_args": {}}}, f)
    torch.save({"model": state(blt_entries(cfg), params)}, os.path.join(blt_dir, "consolidated.pth"))
    ent = cfg.entropy_model
    ent_args = dict(
        stack_args(ent.stack),
        vocab_size=260,
        rope_theta=ent.stack.rope_theta,
        norm_eps=1e-5,
        multiple_of=32,
        sliding_window=ent.stack.window,
    )
    with open(os.path.join(ent_dir, "params.json"), "w") as f:
        json.dump({"entropy_model": ent_args, "train_entropy_model": True}, f)
    torch.save({"model": state(entropy_entries(ent), ent_params)}, os.path.join(ent_dir, "consolidated.pth"))
    return blt_dir


def test_meta_layout_round_trip(loaded, tmp_path):
    blt_dir = write_meta(str(tmp_path), loaded)
    meta = blt_jax.from_pretrained(blt_dir)  # finds ../entropy_model by itself
    assert meta.config.encoder == loaded.config.encoder and meta.config.hash == loaded.config.hash
    tokens, lengths = rows()
    ref = np.asarray(loaded.logits(tokens, lengths))
    got = np.asarray(meta.logits(tokens, lengths))
    # The files hold bf16 weights (as the release does): compare at bf16 precision.
    np.testing.assert_allclose(got, ref, atol=0.1, rtol=0.05)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.999
    np.testing.assert_allclose(np.asarray(meta.entropies(tokens)), np.asarray(loaded.entropies(tokens)), atol=0.05)


def test_meta_without_torch_says_what_to_install(loaded, tmp_path, monkeypatch):
    blt_dir = write_meta(str(tmp_path), loaded)
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
        blt_jax.from_pretrained(blt_dir)


@pytest.mark.parametrize(
    "key,value",
    [
        ("downsampling_by_pooling", "avg"),
        ("norm_type", "layernorm"),
        ("non_linearity", "gelu"),
        ("weight_tying", True),
        ("encoder_enable_byte_ngrams", True),
    ],
)
def test_meta_unsupported_options_are_named(loaded, tmp_path, key, value):
    blt_dir = write_meta(str(tmp_path), loaded)
    with open(os.path.join(blt_dir, "params.json")) as f:
        raw = json.load(f)
    raw["model"][key] = value
    with open(os.path.join(blt_dir, "params.json"), "w") as f:
        json.dump(raw, f)
    with pytest.raises(blt_jax.ConfigError, match=f"model.{key}"):
        blt_jax.from_pretrained(blt_dir)


def _rewrite_params(blt_dir, model_fields, patcher_args):
    """params.json with these model patching fields (None: removed) and data.patcher_args (None: no
    data section)."""
    path = os.path.join(blt_dir, "params.json")
    with open(path) as f:
        raw = json.load(f)
    for key, value in model_fields.items():
        raw["model"].pop(key, None)
        if value is not None:
            raw["model"][key] = value
    raw.pop("data", None)
    if patcher_args is not None:
        raw["data"] = {"patcher_args": patcher_args}
    with open(path, "w") as f:
        json.dump(raw, f)


@pytest.mark.parametrize(
    "model_fields,patcher_args,want",
    [
        # No data.patcher_args: the model section's fields.
        ({"patching_threshold": 0.5, "monotonicity": True}, None, dict(threshold=0.5, monotonic=True)),
        # Only data.patcher_args.
        (
            {"patching_threshold": None},
            {"threshold": 0.25, "max_patch_length": 3},
            dict(threshold=0.25, max_patch_length=3),
        ),
        # Both, disagreeing (an old threshold left in the model section, as Meta's debug config does):
        # data.patcher_args wins, field by field.
        (
            {"patching_threshold": 100.0, "max_patch_length": 7},
            {"threshold": 0.5, "monotonicity": False},
            dict(threshold=0.5, max_patch_length=7, monotonic=False),
        ),
        # Static patches of int(patch_size) bytes.
        (
            {"patching_threshold": None},
            {"patching_mode": "static", "patch_size": 3.0},
            dict(mode="static", static_size=3),
        ),
    ],
)
def test_meta_patching_rule_comes_from_patcher_args_first(loaded, tmp_path, caplog, model_fields, patcher_args, want):
    import dataclasses
    import logging

    blt_dir = write_meta(str(tmp_path), loaded)
    _rewrite_params(blt_dir, model_fields, patcher_args)
    with caplog.at_level(logging.INFO, logger="blt_jax.convert"):
        meta = blt_jax.from_pretrained(blt_dir)
    expected = dataclasses.replace(blt_jax.PatchingConfig(), **want)
    assert meta.config.patching == expected
    in_model, in_patcher = model_fields.get("patching_threshold"), (patcher_args or {}).get("threshold")
    disagree = None not in (in_model, in_patcher) and in_model != in_patcher
    assert ("data.patcher_args.threshold=0.5 used" in caplog.text) == disagree, caplog.text
    # The patch starts follow that rule (and not the model section's, where they differ).
    tokens = rows()[0]
    got = np.asarray(meta.patch_lengths(tokens))
    same_rule = blt_jax.BLTModel(dataclasses.replace(meta.config, patching=expected), meta.params, meta.entropy_params)
    np.testing.assert_array_equal(got, np.asarray(same_rule.patch_lengths(tokens)))
    if disagree:  # threshold 100: only max_patch_length (7) cuts the 20 bytes; 0.5: many patches
        model_rule = dataclasses.replace(expected, threshold=100.0)
        stale = blt_jax.BLTModel(
            dataclasses.replace(meta.config, patching=model_rule), meta.params, meta.entropy_params
        )
        assert (np.asarray(stale.patch_lengths(tokens)) > 0).sum(axis=1).max() <= 4
        assert (got > 0).sum(axis=1).min() > 5


def _rows_with_eos():
    """Two rows whose second document starts mid-row (EOS at 9), with fixed patches."""
    tokens, lengths = rows()
    tokens[:, 9], tokens[:, 10] = 2, 1  # EOS, then BOS of the next document
    return tokens, lengths


@pytest.mark.parametrize(
    "attn_bias_type,want", [("causal", "causal"), ("block_causal", "block_causal"), (None, "causal")]
)  # absent: Meta's code default
def test_meta_attn_bias_type_sets_the_latent_mask(loaded, tmp_path, attn_bias_type, want):
    import dataclasses

    import numpy_blt

    blt_dir = write_meta(str(tmp_path), loaded)
    _rewrite_params(blt_dir, {"attn_bias_type": attn_bias_type}, {})
    meta = blt_jax.from_pretrained(blt_dir)
    assert meta.config.latent_mask == want
    tokens, lengths = _rows_with_eos()
    got = np.asarray(meta.logits(tokens, lengths))
    for row in range(2):
        ref = numpy_blt.blt_forward(meta.params, meta.config, tokens[row], lengths[row])  # float64, same mask
        np.testing.assert_allclose(got[row], ref, atol=5e-5, rtol=0)
    # The mask matters here: the other one changes the logits after the EOS, and only there.
    other = "block_causal" if want == "causal" else "causal"
    flipped = blt_jax.BLTModel(dataclasses.replace(meta.config, latent_mask=other), meta.params, meta.entropy_params)
    diff = np.abs(np.asarray(flipped.logits(tokens, lengths)) - got).max(axis=(0, 2))
    assert diff[:9].max() < 1e-5 and diff[10:].max() > 1e-3, diff


def test_causal_latent_mask_survives_our_format_and_is_refused_by_hf(loaded, tmp_path):
    import dataclasses

    from blt_jax.convert.hf import hf_config_dict

    causal = blt_jax.BLTModel(
        dataclasses.replace(loaded.config, latent_mask="causal"), loaded.params, loaded.entropy_params
    )
    causal.save(str(tmp_path / "ours"))
    assert blt_jax.from_pretrained(str(tmp_path / "ours")).config.latent_mask == "causal"
    with pytest.raises(blt_jax.ConfigError, match="latent_mask"):
        hf_config_dict(causal.config)


@pytest.mark.parametrize(
    "field,change",
    [
        ("latent_mask", dict(latent_mask="causal")),
        ("patching.mode", dict(patching=blt_jax.PatchingConfig(mode="space"))),
        ("patching.threshold_add", dict(patching=blt_jax.PatchingConfig(threshold=3.0, threshold_add=0.5))),
        ("entropy_model", None),
    ],
)
def test_export_to_hf_refuses_what_hf_cannot_express_in_one_line(loaded, tmp_path, field, change):
    import dataclasses

    from user import blt_jax as run

    if change is None:  # a model without its entropy LM
        model = blt_jax.BLTModel(dataclasses.replace(loaded.config, entropy_model=None), loaded.params, None)
    else:
        model = blt_jax.BLTModel(dataclasses.replace(loaded.config, **change), loaded.params, loaded.entropy_params)
    model.save(str(tmp_path / "ours"))
    result = run("export", "ours", "for_hf", "--format", "hf", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"blt-jax export: error: {field}: "), lines[0]
    assert not (tmp_path / "for_hf").exists()  # refused before anything is written


def test_meta_unknown_attn_bias_type_is_named(loaded, tmp_path):
    blt_dir = write_meta(str(tmp_path), loaded)
    _rewrite_params(blt_dir, {"attn_bias_type": "local_block_causal"}, {})
    with pytest.raises(blt_jax.ConfigError, match=r"model.attn_bias_type: 'local_block_causal' is not supported"):
        blt_jax.from_pretrained(blt_dir)


def test_meta_unknown_patching_mode_is_named(loaded, tmp_path):
    blt_dir = write_meta(str(tmp_path), loaded)
    _rewrite_params(blt_dir, {}, {"patching_mode": "bpe"})
    with pytest.raises(blt_jax.ConfigError, match=r"data.patcher_args.patching_mode: 'bpe' is not supported"):
        blt_jax.from_pretrained(blt_dir)


# ---- our format and the facade -------------------------------------------------------------------


def test_native_round_trip_is_exact(loaded, tmp_path):
    loaded.save(str(tmp_path / "ours"))
    again = blt_jax.from_pretrained(str(tmp_path / "ours"))
    assert again.config == loaded.config and again.config.latent_mask == "block_causal"  # HF: block-causal
    tokens, lengths = rows()
    np.testing.assert_array_equal(np.asarray(again.logits(tokens, lengths)), np.asarray(loaded.logits(tokens, lengths)))
    np.testing.assert_array_equal(np.asarray(again.entropies(tokens)), np.asarray(loaded.entropies(tokens)))


def test_hf_names_cover_every_tensor_of_a_saved_model(hf_dir, loaded):
    names = set(read_safetensors(os.path.join(hf_dir, "model.safetensors")))
    ours = {hf_name(e.name) for e in blt_entries(loaded.config) if e.kind != "hash"}
    ours |= {hf_name(e.name, patcher=True) for e in entropy_entries(loaded.config.entropy_model)}
    ours.add("model.encoder_hash_tok_embedding.weight")
    assert names == ours


def test_facade_rejects_bad_inputs(loaded):
    tokens, lengths = rows()
    with pytest.raises(ValueError, match=r"\[B, N\].*tokens\[None\]"):
        loaded.logits(tokens[0])
    with pytest.raises(ValueError, match=r"in \[0, 260\)"):
        loaded.logits(np.full((1, 4), 300))
    with pytest.raises(ValueError, match="must be integers"):
        loaded.entropies(np.zeros((1, 4), np.float32))
    bad = lengths.copy()
    bad[1, 1] += 1
    with pytest.raises(ValueError, match=r"row 1 sum to 22, expected N \+ 1 = 21"):
        loaded.logits(tokens, bad)
    first = np.array([[2, 3, 4, 4, 4, 4, 0], [1, 2, 9, 3, 6, 0, 0]])
    with pytest.raises(ValueError, match="first patch"):
        loaded.logits(tokens, first)
    with pytest.raises(ValueError, match="max_new_bytes"):
        loaded.generate("hello", max_new_bytes=0)
    with pytest.raises(ValueError, match="prompt 0"):
        loaded.generate([np.array([[1, 2]])])


def test_facade_patch_lengths_contract(loaded):
    tokens, _ = rows()
    lengths = np.asarray(loaded.patch_lengths(jax.numpy.asarray(tokens)))  # jax input accepted
    assert lengths.shape == (2, N + 1) and lengths.dtype == np.int32
    assert (lengths.sum(1) == N + 1).all() and (lengths[:, 0] == 1).all() and (lengths[:, 1] == 1).all()
    for row in lengths:  # trailing zeros only
        nz = np.flatnonzero(row)
        assert (row[: nz[-1] + 1] > 0).all()
    small = np.asarray(loaded.patch_lengths(tokens, max_patches=4))
    assert small.shape == (2, 4) and (small.sum(1) == N + 1).all()
    np.testing.assert_array_equal(np.asarray(loaded.logits(tokens)), np.asarray(loaded.logits(tokens, lengths)))


def test_model_without_entropy_lm_explains(loaded):
    bare = blt_jax.BLTModel(loaded.config, jax.device_get(loaded.params))
    with pytest.raises(ValueError, match="no entropy LM"):
        bare.entropies(np.ones((1, 3), np.int32))
