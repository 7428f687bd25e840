"""Import and export of the Hugging Face `transformers` layout (`BltForCausalLM.save_pretrained`).

A directory holds `config.json` (a `BltConfig` with encoder/decoder/global/patcher sub-configs) and
`model.safetensors` (or shards + `model.safetensors.index.json`). Tensor names are the reference's with
HF renames, a `model.` prefix, the entropy model under `model.patcher.`, the decoder head as
`lm_head.weight`, and all hash tables fused into one `[T * G, D]` matrix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from blt_jax.config import (
    RELEASED_THRESHOLD,
    BLTConfig,
    ConfigError,
    EntropyLMConfig,
    HashConfig,
    PatchingConfig,
    StackConfig,
)
from blt_jax.convert.hf_tokenizer import save_byte_tokenizer
from blt_jax.convert.layout import WeightError, assemble, blt_entries, entropy_entries, to_torch
from blt_jax.convert.safetensors_io import read_checkpoint_dir, write_safetensors
from blt_jax.tokenizer import BOS_ID, EOS_ID

HASH_NAME = "model.encoder_hash_tok_embedding.weight"
_RULES = (
    (r"\.attention\.w([qkvo])\.", r".self_attn.\1_proj."),
    (r"(\.cross_attn_layers\.\d+)\.w([qkvo])\.", r"\1.\2_proj."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
    (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
    (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.cross_attn_norm_q\.", ".q_norm."),
    (r"\.cross_attn_norm_kv\.", ".k_norm."),
    (r"\.tok_embeddings\.", ".embed_tokens."),
)


def hf_name(name: str, patcher: bool = False) -> str:
    """HF name of a reference tensor name (of the BLT, or of the entropy model if `patcher`)."""
    dotted = "." + name
    for pattern, repl in _RULES:
        dotted = re.sub(pattern, repl, dotted)
    name = dotted[1:]
    if patcher:
        return "model.patcher." + ("lm_head.weight" if name == "output.weight" else name)
    if name == "local_decoder.output.weight":
        return "lm_head.weight"
    return "model." + name


# ---------------------------------------------------------------------------------------------
# Configuration


def _theta(sub: Mapping[str, Any], default: float) -> float:
    rope = sub.get("rope_parameters") or {}
    if "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(sub.get("rope_theta", default))


def _stack(sub: Mapping[str, Any], where: str, window: int | None, default_theta: float) -> StackConfig:
    heads = int(sub["num_attention_heads"])
    kv = sub.get("num_key_value_heads") or heads
    if int(kv) != heads:
        raise ConfigError(
            f"{where}.num_key_value_heads", f"grouped-query attention ({kv} kv heads for {heads}) is not supported"
        )
    act = sub.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}.hidden_act", f"only silu (SwiGLU) is supported, got {act!r}")
    hidden = sub.get("intermediate_size")
    if hidden is None:  # transformers' own default
        hidden = int(8 * int(sub["hidden_size"]) / 3)
    try:
        return StackConfig(
            dim=int(sub["hidden_size"]),
            n_layers=int(sub["num_hidden_layers"]),
            n_heads=heads,
            ffn_hidden=int(hidden),
            rope_theta=_theta(sub, default_theta),
            window=None if window is None else int(window),
            norm_eps=float(sub.get("rms_norm_eps", 1e-5)),
        )
    except ConfigError as e:
        raise e.under(where) from None


def config_from_hf(cfg: Mapping[str, Any], with_patcher: bool = True) -> tuple[BLTConfig, EntropyLMConfig | None]:
    """Our configurations from an HF `BltConfig` dict (config.json).

    Returns:
      (the BLT config, the entropy LM config or None when the checkpoint has no patcher).
    """
    window = cfg.get("local_attention_window_len")
    enc_raw, dec_raw, glob_raw = cfg["encoder_config"], cfg["decoder_config"], cfg["global_config"]
    encoder = _stack(enc_raw, "encoder_config", window, 500000.0)
    decoder = _stack(dec_raw, "decoder_config", window, 500000.0)
    latent = _stack(glob_raw, "global_config", None, 500000.0)
    if encoder.n_heads != decoder.n_heads:
        raise ConfigError(
            "decoder_config.num_attention_heads",
            f"HF ties cross-attention heads to each stack's heads; {encoder.n_heads} (encoder) != "
            f"{decoder.n_heads} (decoder) cannot be expressed with one cross_attn_heads",
        )
    entropy = None
    if with_patcher and cfg.get("patch_in_forward", True) and cfg.get("patcher_config"):
        pc = cfg["patcher_config"]
        entropy = EntropyLMConfig(
            _stack(pc, "patcher_config", pc.get("sliding_window"), 10000.0), vocab_size=int(pc.get("vocab_size", 260))
        )
    sizes = cfg.get("encoder_hash_byte_group_size") or [3, 4, 5, 6, 7, 8]
    hash_cfg = HashConfig(
        group_sizes=tuple(sizes),
        vocab=int(cfg.get("encoder_hash_byte_group_vocab", 500002)),
        n_functions=int(cfg.get("encoder_hash_byte_group_nb_functions", 1)),
    )
    mode = cfg.get("patching_mode") or "entropy"
    patching = PatchingConfig(
        mode=mode,
        threshold=float(cfg.get("patching_threshold") or RELEASED_THRESHOLD),
        max_patch_length=cfg.get("max_patch_length"),
    )
    config = BLTConfig(
        encoder=encoder,
        latent=latent,
        decoder=decoder,
        cross_attn_k=int(cfg.get("cross_attn_k", 2)),
        cross_attn_heads=encoder.n_heads,
        cross_attn_all_layers_encoder=bool(enc_raw.get("cross_attn_all_layers", False)),
        cross_attn_all_layers_decoder=bool(dec_raw.get("cross_attn_all_layers", True)),
        hash=hash_cfg,
        patching=patching,
        entropy_model=entropy,
        vocab_size=int(cfg.get("vocab_size", 260)),
    )
    return config, entropy


def hf_config_dict(config: BLTConfig) -> dict:
    """The `transformers.BltConfig` keyword arguments of our config (for export, and for side-by-side
    benchmarks that pass patch lengths themselves). HF ties each stack's cross-attention heads to the
    stack's heads and has no EOS document masks; the rest maps one to one.

    Raises:
      ConfigError: naming the first field HF cannot express.
    """
    if config.latent_norm:
        raise ConfigError("latent_norm", "HF's BltForCausalLM has no final norm on the latent transformer")
    stacks = {"encoder": config.encoder, "latent": config.latent, "decoder": config.decoder}
    if config.entropy_model is not None:
        stacks["entropy_model.stack"] = config.entropy_model.stack
    for where, st in stacks.items():  # what HF's BLT stacks cannot express (a byteified latent can have it)
        for field, plain in (
            ("n_kv_heads", st.n_heads),
            ("head_dim", st.dim // st.n_heads),
            ("rope_scaling", None),
            ("qkv_bias", False),
        ):
            if getattr(st, field) != plain:
                raise ConfigError(
                    f"{where}.{field}", f"HF's BltForCausalLM cannot express {field}={getattr(st, field)!r}"
                )
    if config.latent_mask != "block_causal":
        raise ConfigError("latent_mask", f"HF's BltForCausalLM has no {config.latent_mask!r} latent mask")
    if config.cross_attn_heads != config.encoder.n_heads or config.encoder.n_heads != config.decoder.n_heads:
        raise ConfigError("cross_attn_heads", "HF needs cross_attn_heads == encoder.n_heads == decoder.n_heads")
    if config.encoder.window != config.decoder.window:
        raise ConfigError("decoder.window", "HF uses one local window for encoder and decoder")

    def stack(st, **extra):
        return dict(
            hidden_size=st.dim,
            num_hidden_layers=st.n_layers,
            num_attention_heads=st.n_heads,
            intermediate_size=st.ffn_hidden,
            rms_norm_eps=st.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": st.rope_theta},
            **extra,
        )

    local = dict(cross_attn_k=config.cross_attn_k, hidden_size_global=config.latent.dim)
    out = dict(
        vocab_size=config.vocab_size,
        cross_attn_k=config.cross_attn_k,
        local_attention_window_len=config.encoder.window,
        patching_mode=config.patching.mode,
        patching_threshold=config.patching.threshold,
        max_patch_length=config.patching.max_patch_length,
        encoder_config=stack(config.encoder, cross_attn_all_layers=config.cross_attn_all_layers_encoder, **local),
        decoder_config=stack(config.decoder, cross_attn_all_layers=config.cross_attn_all_layers_decoder, **local),
        global_config=stack(config.latent),
        patch_in_forward=config.entropy_model is not None,
    )
    if config.hash is not None:
        out.update(
            encoder_hash_byte_group_size=list(config.hash.group_sizes),
            encoder_hash_byte_group_vocab=config.hash.vocab,
            encoder_hash_byte_group_nb_functions=config.hash.n_functions,
        )
    if config.entropy_model is not None:
        out["patcher_config"] = stack(config.entropy_model.stack, sliding_window=config.entropy_model.stack.window)
    return out


# ---------------------------------------------------------------------------------------------
# Weights


def _split_hash(tensors: Mapping[str, np.ndarray], config: BLTConfig) -> dict[str, np.ndarray]:
    """Reference-named per-table hash matrices from the fused HF matrix (if shaped right)."""
    fused = tensors.get(HASH_NAME)
    if fused is None or config.hash is None:
        return {}
    tables, vocab = config.hash.n_tables, config.hash.vocab
    if fused.shape[0] != tables * vocab:
        raise WeightError(
            f"{HASH_NAME} has {fused.shape[0]} rows, expected {tables} tables x {vocab} buckets = {tables * vocab}"
        )
    return {f"encoder_hash_tok_embedding.{t}.weight": fused[t * vocab : (t + 1) * vocab] for t in range(tables)}


def load_hf(directory: str, dtype: np.dtype = np.float32) -> tuple[BLTConfig, dict, dict | None]:
    """Loads an HF-layout BLT directory.

    Returns:
      (config, BLT params, entropy LM params or None).

    Raises:
      FileNotFoundError, ConfigError, WeightError (naming every bad tensor).
    """
    from blt_jax.params import abstract_params  # late import: keeps convert importable alone

    with open(os.path.join(directory, "config.json")) as f:
        raw_cfg = json.load(f)
    tensors = read_checkpoint_dir(directory)
    has_patcher = any(name.startswith("model.patcher.") for name in tensors)
    config, entropy_cfg = config_from_hf(raw_cfg, with_patcher=has_patcher)

    blt_map = {hf_name(e.name): e.name for e in blt_entries(config) if e.kind != "hash"}
    pat_map = {hf_name(e.name, patcher=True): e.name for e in entropy_entries(entropy_cfg)} if entropy_cfg else {}
    blt_named = {blt_map.get(k, k): v for k, v in tensors.items() if k not in pat_map and k != HASH_NAME}
    blt_named.update(_split_hash(tensors, config))
    params = assemble(blt_entries(config), blt_named, abstract_params(config), dtype, directory)
    entropy_params = None
    if entropy_cfg is not None:
        pat_named = {pat_map[k]: v for k, v in tensors.items() if k in pat_map}
        # Unexpected patcher tensors were already reported with the BLT's (they are not in pat_map).
        entropy_params = assemble(
            entropy_entries(entropy_cfg), pat_named, abstract_params(entropy_cfg), dtype, f"{directory} (patcher)"
        )
    return config, params, entropy_params


def _flat_get(tree: Mapping, path: tuple[str, ...]) -> np.ndarray:
    node = tree
    for key in path:
        node = node[key]
    return np.asarray(node)


def hf_export_config(config: BLTConfig, with_entropy_lm: bool) -> dict:
    """The `config.json` of an HF export (a `BltConfig` with the patcher and its threshold).

    Raises:
      ConfigError: naming the first field HF cannot express, or the missing entropy LM.
    """
    fields = hf_config_dict(config)
    patching = config.patching
    if patching.mode != "entropy":  # HF would patch every byte on its own
        raise ConfigError(
            "patching.mode",
            f"HF's BltForCausalLM patches by entropy only, not {patching.mode!r}; "
            "export an entropy-patched model, or keep our format (--format native)",
        )
    if patching.monotonic or patching.threshold_add is not None:
        field = "monotonic" if patching.monotonic else "threshold_add"
        raise ConfigError(f"patching.{field}", "HF's patcher applies a global entropy threshold only")
    if not with_entropy_lm or config.entropy_model is None:
        raise ConfigError(
            "entropy_model",
            "HF's BltForCausalLM patches with its entropy LM, and this model has "
            "none; give it one (--entropy-checkpoint)",
        )
    # use_cache false: transformers 5.23's BltForCausalLM builds `DynamicCache(config=BltConfig)`,
    # which reads `num_hidden_layers`, a field the composite BltConfig lacks, so any forward with
    # the default use_cache=True (lm-eval's hf backend, `generate`) raises AttributeError.
    return {
        "architectures": ["BltForCausalLM"],
        "model_type": "blt",
        "dtype": config.dtype,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "use_cache": False,
        **fields,
    }


def save_hf(directory: str, config: BLTConfig, params: Mapping, entropy_params: Mapping | None) -> None:
    """Writes what `transformers.BltForCausalLM.from_pretrained(directory)` loads: `config.json`
    (`hf_export_config`) and `model.safetensors` (the patcher's weights included), and the byte
    tokenizer `AutoTokenizer.from_pretrained(directory)` loads (`hf_tokenizer`): transformers has
    none for BLT, and tools such as lm-eval's `hf` backend need one."""
    meta = hf_export_config(config, entropy_params is not None)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(meta, f, indent=2)
    write_safetensors(os.path.join(directory, "model.safetensors"), export_hf_tensors(config, params, entropy_params))
    save_byte_tokenizer(directory)


def export_hf_tensors(
    config: BLTConfig, params: Mapping, entropy_params: Mapping | None = None
) -> dict[str, np.ndarray]:
    """Our parameters as an HF-named state dict (torch layouts), e.g. to write `model.safetensors`."""
    out: dict[str, np.ndarray] = {}
    hash_tables = []
    for e in blt_entries(config):
        value = _flat_get(params, e.path)
        if e.kind == "hash":
            hash_tables.append(value[e.index])
        else:
            out[hf_name(e.name)] = to_torch(e.kind, value)
    if hash_tables:
        out[HASH_NAME] = np.concatenate(hash_tables, axis=0)
    if entropy_params is not None and config.entropy_model is not None:
        for e in entropy_entries(config.entropy_model):
            out[hf_name(e.name, patcher=True)] = to_torch(e.kind, _flat_get(entropy_params, e.path))
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
