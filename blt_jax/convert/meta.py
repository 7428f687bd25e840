"""Import of Meta's released layout: `params.json` + `consolidated.pth` per model directory.

`facebook/blt` holds `blt_1b/`, `blt_7b/` and `entropy_model/`, each a training-args dump
(`params.json`, model args under "model", or under "entropy_model" for the entropy LM) and
`consolidated.pth` (`torch.save({"model": state_dict})`). Reading `.pth` needs torch (imported only
here, only when such a file is loaded).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from blt_jax.config import (
    LATENT_MASKS,
    PATCHING_MODES,
    RELEASED_THRESHOLD,
    BLTConfig,
    ConfigError,
    EntropyLMConfig,
    HashConfig,
    PatchingConfig,
    StackConfig,
    swiglu_hidden,
)
from blt_jax.convert.layout import assemble, blt_entries, entropy_entries
from blt_jax.errors import InputError, MissingDependency

logger = logging.getLogger("blt_jax.convert")

# The reference's realtime patcher forces this window whatever the entropy model's args say.
ENTROPY_WINDOW = 512


def _model_args(raw: Mapping[str, Any], keys: tuple[str, ...], marker: str) -> dict:
    """The model arguments: the first mapping under `keys` (or the top level) holding `marker`."""
    for key in keys:
        if isinstance(raw.get(key), Mapping) and marker in raw[key]:
            return dict(raw[key])
    if marker in raw:
        return dict(raw)
    raise ConfigError(
        "params.json", f"no model arguments with {marker!r} found (looked under {', '.join(keys)} and the top level)"
    )


def _hidden(args: Mapping[str, Any], dim: int) -> int:
    return swiglu_hidden(dim, int(args.get("multiple_of") or 256), args.get("ffn_dim_multiplier"))


def _check_heads(args: Mapping[str, Any], dim: int, heads: int, where: str) -> None:
    head_dim = args.get("head_dim")
    if head_dim is not None and int(head_dim) != dim // heads:
        raise ConfigError(f"{where}.head_dim", f"head_dim={head_dim} != dim/n_heads={dim // heads} is not supported")


def _stack(args, dim_key, layers_key, heads_key, window, theta) -> StackConfig:
    dim, heads = int(args[dim_key]), int(args[heads_key])
    _check_heads(args, dim, heads, "model")
    try:
        return StackConfig(
            dim=dim,
            n_layers=int(args[layers_key]),
            n_heads=heads,
            ffn_hidden=_hidden(args, dim),
            rope_theta=float(theta),
            window=None if window is None else int(window),
            norm_eps=float(args.get("norm_eps", 1e-5)),
        )
    except ConfigError as e:
        raise e.under(f"model.{dim_key}") from None


def entropy_config_from_meta(raw: Mapping[str, Any]) -> EntropyLMConfig:
    """Our entropy LM config from its `params.json` (training args) or `config.json` ({"args": ...})."""
    args = _model_args(raw, ("entropy_model", "args", "model"), "dim")
    dim, heads = int(args["dim"]), int(args["n_heads"])
    _check_heads(args, dim, heads, "entropy_model")
    kv = args.get("n_kv_heads")
    if kv is not None and int(kv) != heads:
        raise ConfigError("entropy_model.n_kv_heads", "grouped-query attention is not supported")
    stack = StackConfig(
        dim=dim,
        n_layers=int(args["n_layers"]),
        n_heads=heads,
        ffn_hidden=_hidden(args, dim),
        rope_theta=float(args.get("rope_theta", 10000.0)),
        window=int(args.get("sliding_window") or ENTROPY_WINDOW),
        norm_eps=float(args.get("norm_eps", 1e-5)),
    )
    return EntropyLMConfig(stack=stack, vocab_size=int(args.get("vocab_size", 260)))


# Our PatchingConfig field -> (the model section's key, data.patcher_args' key). Meta's generation
# code and its Hub loader build the patcher from data.patcher_args; the model keys are the fallback.
PATCHING_KEYS = {
    "mode": ("patching_mode", "patching_mode"),
    "threshold": ("patching_threshold", "threshold"),
    "monotonic": ("monotonicity", "monotonicity"),
    "threshold_add": ("patching_threshold_add", "threshold_add"),
    "max_patch_length": ("max_patch_length", "max_patch_length"),
}


def patching_from_meta(raw: Mapping[str, Any], model_args: Mapping[str, Any]) -> PatchingConfig:
    """The patching rule of a Meta BLT: `data.patcher_args` where it has a field, else the model
    section's `patching_*` fields, else Meta's defaults. A field the two sections disagree on is
    logged with the value used."""
    data = raw.get("data") if isinstance(raw.get("data"), Mapping) else {}
    patcher = data.get("patcher_args") if isinstance(data.get("patcher_args"), Mapping) else {}
    chosen: dict[str, Any] = {}
    for field, (model_key, patcher_key) in PATCHING_KEYS.items():
        in_model, in_patcher = model_args.get(model_key), patcher.get(patcher_key)
        if patcher_key in patcher:
            chosen[field] = in_patcher
            if model_key in model_args and in_model != in_patcher:
                logger.info(
                    "params.json: data.patcher_args.%s=%r used for patching; model.%s=%r differs (Meta's "
                    "generation code reads data.patcher_args)",
                    patcher_key,
                    in_patcher,
                    model_key,
                    in_model,
                )
        elif in_model is not None:
            chosen[field] = in_model
    mode = chosen.get("mode") or "entropy"
    # Meta's "bpe" mode splits at BPE delimiter ids in the byte stream; ours (a token LM's tokens,
    # read by its tokenizer) is another rule under the same name.
    readable = [m for m in PATCHING_MODES if m != "bpe"]
    if mode not in readable:
        raise ConfigError(
            "data.patcher_args.patching_mode", f"{mode!r} is not supported; expected one of {', '.join(readable)}"
        )
    static = {}
    if mode == "static":  # Meta fills static patches with int(patch_size) bytes
        static["static_size"] = int(patcher.get("patch_size", 4.5))
    threshold = chosen.get("threshold")
    return PatchingConfig(
        mode=mode,
        threshold=float(threshold) if threshold is not None else RELEASED_THRESHOLD,
        monotonic=bool(chosen.get("monotonic") or False),
        threshold_add=None if chosen.get("threshold_add") is None else float(chosen["threshold_add"]),
        max_patch_length=None if chosen.get("max_patch_length") is None else int(chosen["max_patch_length"]),
        **static,
    )


def blt_config_from_meta(raw: Mapping[str, Any], entropy: EntropyLMConfig | None) -> BLTConfig:
    """Our BLT config from a `ByteLatentTransformerArgs` dump."""
    args = _model_args(raw, ("model", "args"), "dim_global")
    unsupported = {
        "cross_attn_encoder": (True, "the encoder must build patches by cross-attention"),
        "cross_attn_decoder": (True, "the decoder must read patches by cross-attention"),
        "cross_attn_init_by_pooling": (True, "patch queries must start from pooled byte states"),
        "use_rope": (True, "only RoPE positions are supported"),
    }
    for key, (want, why) in unsupported.items():
        if key in args and bool(args[key]) != want:
            raise ConfigError(f"model.{key}", f"{args[key]!r} is not supported: {why}")
    # Options that change the math away from the released models (absent keys take Meta's defaults,
    # which are the released values).
    for key, want in (("norm_type", "rmsnorm"), ("non_linearity", "swiglu")):
        if args.get(key) not in (None, want):
            raise ConfigError(f"model.{key}", f"{args[key]!r} is not supported (only {want!r})")
    for key in ("weight_tying", "tie_local_encoder_decoder_logits", "encoder_enable_byte_ngrams"):
        if args.get(key):
            raise ConfigError(f"model.{key}", f"{args[key]!r} is not supported (only false)")
    pooling = args.get("downsampling_by_pooling") or "max"
    if pooling != "max":
        raise ConfigError("model.downsampling_by_pooling", f"only 'max' pooling is supported, got {pooling!r}")
    for key in ("n_kv_heads", "n_kv_heads_global"):
        if args.get(key) is not None:
            raise ConfigError(f"model.{key}", "grouped-query attention is not supported")
    if args.get("cross_attn_window_encoder") is not None or args.get("cross_attn_window_decoder") is not None:
        raise ConfigError("model.cross_attn_window_encoder", "cross-attention windows are not supported")
    theta = args.get("rope_theta", 500000.0)
    window = args.get("local_attention_window_len")
    sizes = args.get("encoder_hash_byte_group_size")
    if isinstance(sizes, str):
        sizes = [int(x) for x in sizes.split(",") if x]
    hash_cfg = None
    if sizes:
        hash_cfg = HashConfig(
            group_sizes=tuple(sizes),
            vocab=int(args.get("encoder_hash_byte_group_vocab", 30000)),
            n_functions=int(args.get("encoder_hash_byte_group_nb_functions", 3)),
        )
    patching = patching_from_meta(raw, args)
    # Meta's global transformer builds its mask from attn_bias_type; absent, its code default "causal".
    latent_mask = args.get("attn_bias_type") or "causal"
    if latent_mask not in LATENT_MASKS:
        raise ConfigError(
            "model.attn_bias_type",
            f"{latent_mask!r} is not supported for the latent transformer; expected one of {', '.join(LATENT_MASKS)}",
        )
    return BLTConfig(
        encoder=_stack(args, "dim_local_encoder", "n_layers_local_encoder", "n_heads_local_encoder", window, theta),
        latent=_stack(args, "dim_global", "n_layers_global", "n_heads_global", None, theta),
        decoder=_stack(args, "dim_local_decoder", "n_layers_local_decoder", "n_heads_local_decoder", window, theta),
        cross_attn_k=int(args.get("cross_attn_k") or 1),
        cross_attn_heads=int(args["cross_attn_nheads"]) if args.get("cross_attn_nheads") else None,
        cross_attn_all_layers_encoder=bool(args.get("cross_attn_all_layers_encoder", False)),
        cross_attn_all_layers_decoder=bool(args.get("cross_attn_all_layers_decoder", False)),
        hash=hash_cfg,
        patching=patching,
        entropy_model=entropy,
        vocab_size=int(args.get("vocab_size", 260)),
        latent_mask=latent_mask,
    )


def read_pth(path: str) -> dict[str, np.ndarray]:
    """The state dict of a `consolidated.pth` as float32 numpy arrays (needs torch)."""
    try:
        import torch
    except ImportError:
        raise MissingDependency(
            f"reading {path} needs PyTorch, which is not installed; install the CPU build with "
            "'pip install torch==2.13.0' (or convert the checkpoint to safetensors elsewhere)"
        ) from None
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: expected a state dict (or {{'model': state_dict}}), got {type(state).__name__}")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def find_entropy_dir(model_dir: str) -> str | None:
    """The entropy model directory next to (or inside) a Meta model directory, if any."""
    for candidate in (
        os.path.join(model_dir, "entropy_model"),
        os.path.join(os.path.dirname(os.path.abspath(model_dir)), "entropy_model"),
    ):
        if os.path.exists(os.path.join(candidate, "params.json")) and os.path.exists(
            os.path.join(candidate, "consolidated.pth")
        ):
            return candidate
    return None


def load_meta_entropy(directory: str, dtype: np.dtype = np.float32) -> tuple[EntropyLMConfig, dict]:
    """Loads `entropy_model/` (params.json + consolidated.pth)."""
    from blt_jax.params import abstract_params

    with open(os.path.join(directory, "params.json")) as f:
        config = entropy_config_from_meta(json.load(f))
    tensors = read_pth(os.path.join(directory, "consolidated.pth"))
    params = assemble(entropy_entries(config), tensors, abstract_params(config), dtype, directory)
    return config, params


def load_meta(directory: str, entropy_dir: str | None = None, dtype: np.dtype = np.float32):
    """Loads a Meta BLT directory (and its entropy model when found).

    Args:
      directory: holds params.json and consolidated.pth.
      entropy_dir: the entropy model directory; default: `entropy_model/` inside or beside it.

    Returns:
      (config, BLT params, entropy params or None).
    """
    from blt_jax.params import abstract_params

    entropy_dir = entropy_dir or find_entropy_dir(directory)
    entropy_cfg, entropy_params = (None, None)
    if entropy_dir is not None:
        entropy_cfg, entropy_params = load_meta_entropy(entropy_dir, dtype)
    with open(os.path.join(directory, "params.json")) as f:
        config = blt_config_from_meta(json.load(f), entropy_cfg)
    tensors = read_pth(os.path.join(directory, "consolidated.pth"))
    # Non-persistent RoPE buffers may appear in some dumps; they carry no weights.
    ignore = frozenset(k for k in tensors if k.endswith("freqs_cis"))
    params = assemble(blt_entries(config), tensors, abstract_params(config), dtype, directory, ignore)
    return config, params, entropy_params
