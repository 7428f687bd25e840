"""Llama-family token LMs in the Hugging Face layout (`LlamaForCausalLM.save_pretrained`: `config.json`,
`model.safetensors` or shards with `model.safetensors.index.json`, `tokenizer.json`) as token LMs of ours.

What is read, each into one field of `StackConfig` / `TokenLMConfig`: grouped-query attention
(`num_key_value_heads`), `head_dim`, `rope_theta` and Llama 3's RoPE scaling, `rms_norm_eps`,
`tie_word_embeddings`, a uniform sliding window (Mistral), and Qwen2's q/k/v biases. Hugging Face
stores q and k for rotating halves (`rotate_half`); they are permuted to our interleaved pairs when
read (`layout.half_to_pairs`), so the model computes the same function. Anything else that changes the
function (QK-norm, per-layer sliding windows, mixtures of experts, other RoPE types, biases elsewhere)
is refused in one line naming the config field. transformers' Llama attends causally over the whole
row, so the token LM gets no document separator (`eos_id` None).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from blt_jax.config import ConfigError, RopeScaling, StackConfig, TokenLMConfig
from blt_jax.convert.layout import Entry, assemble
from blt_jax.convert.safetensors_io import read_checkpoint_dir

# model_type -> the architecture it names: the families whose blocks are Llama's.
FAMILY = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Keys whose presence (with a true value) means layers we do not compute.
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")


def is_llama_config(cfg: Mapping[str, Any]) -> bool:
    """Whether a `config.json` names a Llama-family causal LM (by model_type or architecture)."""
    return cfg.get("model_type") in FAMILY or any(a in FAMILY.values() for a in cfg.get("architectures") or ())


def describe(cfg: Mapping[str, Any]) -> str:
    """How messages name the model of a `config.json` ("model_type 'gpt2' (GPT2LMHeadModel)")."""
    arch = ", ".join(cfg.get("architectures") or ())
    return f"model_type {cfg.get('model_type')!r}" + (f" ({arch})" if arch else "")


def _rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x)."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = merged.get("rope_type") or merged.get("type") or "default"
    field = "rope_parameters" if params else "rope_scaling"
    if float(merged.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ConfigError("partial_rotary_factor", "partial rotary embeddings are not read")
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ConfigError(f"{field}.rope_type", f"RoPE type {kind!r} is not read (default and llama3 are)")
    try:
        return theta, RopeScaling(
            "llama3",
            float(merged["factor"]),
            float(merged["low_freq_factor"]),
            float(merged["high_freq_factor"]),
            int(merged["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ConfigError(
            f"{field}.{e.args[0]}",
            "missing: llama3 scaling needs factor, low_freq_factor, "
            "high_freq_factor and original_max_position_embeddings",
        ) from None
    except ConfigError as e:
        raise e.under(field) from None


def _window(cfg: Mapping[str, Any]) -> int | None:
    """A sliding window every layer shares (Mistral), or None; per-layer windows are refused."""
    if cfg.get("use_sliding_window"):  # Qwen2: windows on the layers from max_window_layers on
        raise ConfigError("use_sliding_window", "sliding-window attention on some layers only is not read")
    layer_types = cfg.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ConfigError(
            "layer_types",
            f"layers of other kinds than full_attention are not read ({sorted(set(layer_types) - {'full_attention'})})",
        )
    window = cfg.get("sliding_window") if cfg.get("model_type") == "mistral" else None
    return None if window is None else int(window)


def config_from_llama(cfg: Mapping[str, Any]) -> TokenLMConfig:
    """Our token LM configuration of a Llama-family `config.json`.

    Raises:
      ConfigError: naming the first field we do not read (as it is spelled in config.json).
    """
    if not is_llama_config(cfg):
        raise ConfigError(
            "model_type", f"{describe(cfg)} is not a Llama-family causal LM; blt_jax reads {', '.join(FAMILY)}"
        )
    for key in _MOE_KEYS:
        if cfg.get(key):
            raise ConfigError(key, "mixture-of-experts layers are not read")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError("hidden_act", f"only silu (SwiGLU) is read, got {cfg.get('hidden_act')!r}")
    if cfg.get("mlp_bias"):
        raise ConfigError("mlp_bias", "biases in the MLP are not read")
    if cfg.get("attention_bias"):  # Llama's flag puts a bias on the output projection too
        raise ConfigError("attention_bias", "a bias on the attention output projection is not read")
    for key in ("qk_norm", "use_qk_norm"):
        if cfg.get(key):
            raise ConfigError(key, "QK-norm is not read")
    theta, scaling = _rope(cfg)
    try:
        heads = int(cfg["num_attention_heads"])
        dim = int(cfg["hidden_size"])
        stack = StackConfig(
            dim=dim,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads,
            ffn_hidden=int(cfg["intermediate_size"]),
            rope_theta=theta,
            window=_window(cfg),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or dim // heads),
            rope_scaling=scaling,
            qkv_bias=cfg.get("model_type") == "qwen2",
        )
        return TokenLMConfig(
            stack=stack,
            vocab_size=int(cfg["vocab_size"]),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_id=None,
        )
    except KeyError as e:
        raise ConfigError(e.args[0], "missing from config.json") from None
    except ConfigError as e:  # our field names -> the reason is enough; name the config.json key
        raise ConfigError(_HF_FIELD.get(e.field.split(".")[-1], e.field), e.reason) from None


# Our field -> its config.json key, for messages.
_HF_FIELD = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "ffn_hidden": "intermediate_size",
    "rope_theta": "rope_theta",
    "norm_eps": "rms_norm_eps",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
    "window": "sliding_window",
}


def llama_entries(config: TokenLMConfig) -> list[Entry]:
    """Every tensor of a Llama-family checkpoint, in Hugging Face names, with our parameter paths."""
    out = [Entry("model.embed_tokens.weight", ("tok_embeddings", "embedding"), "embed")]
    for i in range(config.stack.n_layers):
        prefix, path = f"model.layers.{i}", (f"layers_{i}",)
        attn = path + ("attention",)
        out += [
            Entry(f"{prefix}.self_attn.q_proj.weight", attn + ("wq",), "qkv_half"),
            Entry(f"{prefix}.self_attn.k_proj.weight", attn + ("wk",), "qkv_half"),
            Entry(f"{prefix}.self_attn.v_proj.weight", attn + ("wv",), "qkv"),
            Entry(f"{prefix}.self_attn.o_proj.weight", attn + ("wo",), "out"),
        ]
        if config.stack.qkv_bias:
            out += [
                Entry(f"{prefix}.self_attn.q_proj.bias", attn + ("bq",), "bias_half"),
                Entry(f"{prefix}.self_attn.k_proj.bias", attn + ("bk",), "bias_half"),
                Entry(f"{prefix}.self_attn.v_proj.bias", attn + ("bv",), "bias"),
            ]
        for theirs, ours in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            out.append(Entry(f"{prefix}.mlp.{theirs}.weight", path + ("feed_forward", ours), "linear"))
        out += [
            Entry(f"{prefix}.input_layernorm.weight", path + ("attention_norm", "scale"), "norm"),
            Entry(f"{prefix}.post_attention_layernorm.weight", path + ("ffn_norm", "scale"), "norm"),
        ]
    out.append(Entry("model.norm.weight", ("norm", "scale"), "norm"))
    if not config.tie_embeddings:
        out.append(Entry("lm_head.weight", ("output", "kernel"), "linear"))
    return out


def read_config(directory: str) -> dict:
    """The parsed `config.json` of a model directory."""
    path = os.path.join(directory, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"unreadable ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "not a JSON object")
    return raw


def load_llama(directory: str, dtype: np.dtype = np.float32) -> tuple[TokenLMConfig, dict]:
    """(config, params) of a Llama-family Hugging Face directory.

    Raises:
      ConfigError: a field we do not read. NotFound: no weights. WeightError: naming every missing,
      unexpected or mis-shaped tensor.
    """
    from blt_jax.params import abstract_params  # late import: keeps convert importable alone

    config = config_from_llama(read_config(directory))
    tensors = read_checkpoint_dir(directory)
    # Older checkpoints store RoPE buffers; a tied model may still carry its (shared) head.
    ignore = {name for name in tensors if name.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        ignore.add("lm_head.weight")
    params = assemble(llama_entries(config), tensors, abstract_params(config), dtype, directory, frozenset(ignore))
    return config, params
