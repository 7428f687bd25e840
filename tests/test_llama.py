"""Llama-family token LMs read exactly: logits equal transformers' (grouped-query attention, a head
width other than D / H, Llama 3's RoPE scaling, tied embeddings; Qwen2's biases; Mistral's window;
sharded weights), RoPE frequencies bit-identical to torch's, `blt-jax convert` from a fresh
directory, and every refusal in one line."""

import os

import numpy as np
import pytest
import teachers
from user import TPU_NOISE, blt_jax

import blt_jax as bj
from blt_jax.config import RopeScaling
from blt_jax.convert import layout
from blt_jax.nn.rope import rope_inv_freq

TOL = 1e-4  # fp32 logits against transformers' fp32 (measured: 1.1e-5 to 1.4e-5 on these models)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A Llama 3-style model (GQA 4:2, head_dim 16 != 48 / 4, llama3 scaling, tied) with a byte-level
    BPE tokenizer, and int ids [2, 200] beyond the scaling's original context."""
    from transformers import LlamaForCausalLM

    directory = tmp_path_factory.mktemp("llama") / "llama-tiny"
    model = teachers.save_random(LlamaForCausalLM, teachers.llama_config(), directory)
    texts = [f"the {i}th line of a small text, with words and numbers {i * 7}\n" for i in range(200)]
    teachers.byte_level_tokenizer(texts, 300, str(directory / "tokenizer.json"))
    ids = np.random.default_rng(0).integers(0, 300, (2, 200))
    return directory, model, ids


def _max_diff(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours) - theirs)))


def test_rope_frequencies_are_torch_bit_for_bit():
    """`1 / theta ** (arange(0, K, 2).float() / K)` as torch computes it on this CPU, for every head
    width up to 128 (and some wider), at the thetas of BLT, Llama 3, Qwen2 and the entropy LM."""
    import torch

    widths = list(range(2, 130, 2)) + [160, 192, 224, 256]
    mismatches = []
    for theta in (10000.0, 500000.0, 1000000.0):
        for k in widths:
            theirs = (1.0 / (theta ** (torch.arange(0, k, 2).float() / k))).numpy()
            if not np.array_equal(rope_inv_freq(k, theta), theirs):
                mismatches.append((theta, k))
    assert not mismatches, mismatches
    # What the previous numpy-pow tables got wrong (head dims 12 and 64 at theta 1e4, among others).
    old = lambda k, t: np.float32(1) / np.power(np.float32(t), np.arange(0, k, 2, dtype=np.float32) / np.float32(k))
    assert any(not np.array_equal(old(k, 1e4), rope_inv_freq(k, 1e4)) for k in (12, 64))


def test_llama3_scaled_frequencies_are_transformers_bit_for_bit():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for factor, low, high, original in ((8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (16.0, 2.0, 3.0, 64)):
        for head_dim in (16, 64, 96, 128):
            rope = {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original,
            }
            config = teachers.llama_config(
                hidden=4 * head_dim, head_dim=head_dim, rope=rope, max_position_embeddings=2 * original
            )
            theirs = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")[0].numpy()
            ours = rope_inv_freq(head_dim, 500000.0, RopeScaling("llama3", factor, low, high, original))
            assert np.array_equal(ours, theirs), (factor, low, high, original, head_dim)


def test_llama_logits_equal_transformers(llama):
    directory, model, ids = llama
    ours = bj.from_pretrained(str(directory))
    assert isinstance(ours, bj.api.TokenLM)
    stack = ours.config.stack
    assert (stack.n_heads, stack.n_kv_heads, stack.head_dim, stack.dim) == (4, 2, 16, 48)
    assert ours.config.tie_embeddings and stack.rope_scaling is not None and ours.config.eos_id is None
    logits = ours.logits(ids)
    assert logits.shape == (2, 200, 300) and logits.dtype == np.float32
    assert _max_diff(logits, teachers.torch_logits(model, ids)) < TOL


def test_without_the_rotary_conversion_the_logits_differ(llama, monkeypatch):
    """Negative control: reading q and k as they are stored (halves, not pairs) is caught."""
    directory, model, ids = llama
    monkeypatch.setattr(layout, "half_to_pairs", lambda weight, heads: weight)
    wrong = bj.from_pretrained(str(directory))
    assert _max_diff(wrong.logits(ids), teachers.torch_logits(model, ids)) > 100 * TOL


def test_qwen2_biases_mistral_window_and_sharded_weights_load_exactly(tmp_path):
    from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    small = dict(
        vocab_size=280,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
    )
    cases = {
        "qwen2": (
            Qwen2ForCausalLM,
            Qwen2Config(num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **small),
            None,
        ),
        "mistral": (MistralForCausalLM, MistralConfig(num_key_value_heads=2, sliding_window=50, **small), None),
        "sharded": (LlamaForCausalLM, teachers.llama_config(tie=False, vocab_size=280), "20KB"),
    }
    ids = np.random.default_rng(1).integers(0, 280, (2, 120))
    for name, (model_class, config, shard) in cases.items():
        model = teachers.save_random(model_class, config, tmp_path / name, seed=1, max_shard_size=shard)
        ours = bj.from_pretrained(str(tmp_path / name))
        assert _max_diff(ours.logits(ids), teachers.torch_logits(model, ids)) < TOL, name
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    assert bj.from_pretrained(str(tmp_path / "qwen2")).config.stack.qkv_bias
    assert bj.from_pretrained(str(tmp_path / "mistral")).config.stack.window == 50


def test_convert_command_writes_our_format_with_the_tokenizer(llama, tmp_path):
    """`blt-jax convert` on a Llama directory, from a fresh directory with relative paths: the result
    loads with the same logits and encodes text as the original tokenizer does."""
    directory, model, ids = llama
    work = tmp_path / "fresh"
    work.mkdir()
    os.symlink(directory, work / "teacher")
    done = blt_jax("convert", "teacher", "converted", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "token LM" in done.stdout and "tokenizer: included" in done.stdout
    assert not any(noise in done.stderr for noise in TPU_NOISE), done.stderr
    assert {"blt_jax.json", "params.safetensors", "tokenizer.json"} <= set(os.listdir(work / "converted"))
    converted = bj.from_pretrained(str(work / "converted"))
    assert _max_diff(converted.logits(ids), teachers.torch_logits(model, ids)) < TOL
    import tokenizers

    reference = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    text = "the 12th line of a small text, naïve ünïcode\n"
    want = reference.encode(text).ids  # its post-processor adds <s> (id 0)
    assert list(converted.encode(text.encode())) == want
    assert list(bj.from_pretrained(str(directory)).encode(text.encode())) == want


def test_refusals_name_the_field(llama, tmp_path):
    """Each config.json field that would change the function is refused, naming the field."""
    import shutil

    directory, _, _ = llama
    cases = {
        "yarn": (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
            "rope_parameters.rope_type",
        ),
        "moe": ({"num_local_experts": 8}, "num_local_experts"),
        "bias": ({"attention_bias": True}, "attention_bias"),
        "gelu": ({"hidden_act": "gelu"}, "hidden_act"),
        "kv": ({"num_key_value_heads": 3}, "num_key_value_heads"),
        "windows": ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
        "partial": ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    }
    for name, (changes, field) in cases.items():
        shutil.copytree(directory, tmp_path / name)
        teachers.edit_config(tmp_path / name, **changes)
        with pytest.raises(bj.ConfigError) as info:
            bj.from_pretrained(str(tmp_path / name))
        assert info.value.field == field, (name, str(info.value))


def test_convert_refusals_are_one_line(llama, tmp_path):
    """From the command line: an architecture we do not read, and a checkpoint missing a tensor, each
    exit code 2 with one line naming what is wrong."""
    import shutil

    from safetensors.numpy import load_file, save_file

    directory, _, _ = llama
    shutil.copytree(directory, tmp_path / "gpt2")
    teachers.edit_config(tmp_path / "gpt2", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    shutil.copytree(directory, tmp_path / "missing")
    weights = load_file(str(tmp_path / "missing" / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(tmp_path / "missing" / "model.safetensors"))
    cases = {
        "gpt2": "model_type 'gpt2' (GPT2LMHeadModel) is an architecture blt_jax does not read",
        "missing": "missing tensor model.layers.1.mlp.up_proj.weight",
    }
    for name, needle in cases.items():
        done = blt_jax("convert", name, "out", cwd=tmp_path)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (name, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("blt-jax convert: error:") and needle in lines[0], (name, lines)
    assert not (tmp_path / "out").exists()
