"""Model directories: our layout, the Hugging Face one and Meta's, detected; and files of named
tensors. Training runs are read by `runs`, which builds on this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from blt_jax import paths
from blt_jax.config import EntropyLMConfig, ModelConfig
from blt_jax.convert.layout import WeightError
from blt_jax.data import token_patches
from blt_jax.errors import InputError, NotFound
from blt_jax.models import model_kind
from blt_jax.params import abstract_params


class CheckpointError(InputError):
    """A path holds no readable model or training checkpoint."""


def check_tree(params: Mapping, abstract: Mapping, source: str) -> None:
    """Raises WeightError naming every missing, unexpected or mis-shaped parameter."""
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
    problems = [f"missing parameter {k} {tuple(want[k].shape)}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected parameter {k}" for k in sorted(set(got) - set(want))]
    problems += [
        f"parameter {k} has shape {tuple(np.shape(got[k]))}, expected {tuple(want[k].shape)}"
        for k in sorted(set(got) & set(want))
        if tuple(np.shape(got[k])) != tuple(want[k].shape)
    ]
    if problems:
        raise WeightError(f"{source}: {len(problems)} parameter problem(s):\n  " + "\n  ".join(problems))


# ---- model directories --------------------------------------------------------------------------


def detect_layout(path: str) -> str:
    """ "native", "hf" (a BLT), "llama" (a Llama-family token LM) or "meta" for a model directory.

    Raises:
      NotFound: none of the layouts is there. InputError: an unreadable config.json, or one of a
      Hugging Face architecture we do not read.
    """
    from blt_jax.convert.llama import FAMILY, describe, is_llama_config
    from blt_jax.convert.native import CONFIG_FILE

    if paths.exists(paths.join(path, CONFIG_FILE)):
        return "native"
    config_json = paths.join(path, "config.json")
    has_meta = paths.exists(paths.join(path, "params.json")) and paths.exists(paths.join(path, "consolidated.pth"))
    if paths.exists(config_json):
        try:
            cfg = paths.read_json(config_json)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{config_json}: unreadable ({e})") from None
        if not isinstance(cfg, dict):
            raise InputError(f"{config_json}: not a JSON object")
        if "encoder_config" in cfg or cfg.get("model_type") == "blt":
            return "hf"
        if is_llama_config(cfg):
            return "llama"
    if has_meta:
        return "meta"
    if paths.exists(config_json):
        raise InputError(
            f"{path}: {describe(cfg)} is an architecture blt_jax does not read (it reads BLTs and "
            f"Llama-family token LMs: {', '.join(FAMILY)})"
        )
    raise NotFound(
        f"{path}: not a model directory. Expected one of: blt_jax.json + params.safetensors "
        "(ours); config.json + model.safetensors (Hugging Face BltForCausalLM, or a Llama-family "
        "LlamaForCausalLM); params.json + consolidated.pth (Meta); checkpoints/ (a blt-jax training run)"
    )


TOKENIZER_FILE = token_patches.TOKENIZER_FILE
TOKENIZER_KEY = token_patches.RECORD_KEY


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model read from a directory or a run.

    Attributes:
      config: its configuration (any model kind).
      params: its parameters.
      entropy_params: a BLT's entropy LM, or None.
      tokenizer: a token LM's tokenizer (`data.bpe.BpeTokenizer` or
        `data.pretrained_tokenizer.PretrainedTokenizer`), or None.
    """

    config: ModelConfig
    params: dict
    entropy_params: dict | None = None
    tokenizer: Any = None


def _require_dir(path: str) -> str:
    resolved = paths.resolve(path)
    if not paths.isdir(resolved):
        raise NotFound(f"{path}: no such directory")
    return resolved


def load_dir(path: str, entropy_path: str | None = None, dtype: Any = np.float32) -> LoadedModel:
    """A model directory in any layout (detected): a BLT (ours, Hugging Face's, Meta's), a token LM
    (ours, or a Llama-family Hugging Face directory, with its tokenizer when it has one), or an
    entropy LM of ours.

    `entropy_path` is Meta's separate entropy model directory. Shapes are checked by the caller.
    """
    resolved = _require_dir(path)
    if paths.is_uri(resolved):  # the readers memory-map local files: read a local copy
        with paths.local_dir(resolved) as local:
            return load_dir(local, entropy_path, dtype)
    layout = detect_layout(resolved)
    if layout == "native":
        from blt_jax.convert.native import load_native, read_meta

        config, params, entropy = load_native(resolved, np.dtype(dtype))
        tokenizer = token_patches.read_tokenizer(
            paths.join(resolved, TOKENIZER_FILE), read_meta(resolved).get(TOKENIZER_KEY)
        )
        return LoadedModel(config, params, entropy, tokenizer)
    if layout == "llama":
        from blt_jax.convert.llama import load_llama
        from blt_jax.data.pretrained_tokenizer import PretrainedTokenizer

        config, params = load_llama(resolved, np.dtype(dtype))
        has_tokenizer = paths.exists(paths.join(resolved, TOKENIZER_FILE))
        tokenizer = PretrainedTokenizer.from_model_dir(resolved) if has_tokenizer else None
        return LoadedModel(config, params, None, tokenizer)
    return LoadedModel(*_load_blt_dir(resolved, layout, entropy_path, dtype))


def _load_blt_dir(resolved: str, layout: str, entropy_path: str | None, dtype: Any):
    if layout == "hf":
        from blt_jax.convert.hf import load_hf

        config, params, entropy = load_hf(resolved, np.dtype(dtype))
    else:
        from blt_jax.convert.meta import load_meta

        config, params, entropy = load_meta(
            resolved, None if entropy_path is None else paths.resolve(entropy_path), np.dtype(dtype)
        )
    return config, params, entropy


TENSORS_SUFFIX = ".safetensors"


def is_tensors_file(path: str) -> bool:
    """A path naming one `.safetensors` file (a part of a model, `load_tensors`) rather than a model."""
    return path.endswith(TENSORS_SUFFIX)


def load_tensors(path: str, dtype: Any = np.float32) -> dict:
    """A `.safetensors` file of '/'-named tensors (such as byteify's `embeddings.safetensors`) as a
    parameter tree, for `train.init_from`.

    Raises:
      NotFound: no such file.
    """
    from blt_jax.convert.native import read_tensors

    resolved = paths.resolve(path)
    if not paths.isfile(resolved):
        raise NotFound(f"{path}: no such file")
    if paths.is_uri(resolved):  # the reader memory-maps a local file: read a local copy
        import tempfile

        with tempfile.TemporaryDirectory() as local:
            copy = paths.join(local, "tensors" + TENSORS_SUFFIX)
            paths.copy_file(resolved, copy)
            return read_tensors(copy, np.dtype(dtype))  # astype copies: nothing stays mapped
    return read_tensors(resolved, np.dtype(dtype))


def load_entropy_dir(path: str) -> tuple[EntropyLMConfig, dict]:
    """(config, params) of an entropy LM from a model directory: our format (an entropy LM alone or
    a BLT saved with its patcher), an HF BLT directory (its patcher), or Meta's layout (an
    `entropy_model/` directory, or a BLT directory beside one)."""
    resolved = _require_dir(path)
    if paths.is_uri(resolved):  # the readers memory-map local files: read a local copy
        with paths.local_dir(resolved) as local:
            return load_entropy_dir(local)
    from blt_jax.convert.native import CONFIG_FILE, load_native

    if paths.exists(paths.join(resolved, CONFIG_FILE)):
        config, params, entropy = load_native(resolved)
        if model_kind(config).is_patcher:
            check_tree(params, abstract_params(config), path)
            return config, params
        entropy_config = model_kind(config).entropy_lm
        if entropy is None or entropy_config is None:
            raise CheckpointError(f"{path}: this model was saved without an entropy LM")
        check_tree(entropy, abstract_params(entropy_config), path)
        return entropy_config, entropy
    params_json = paths.join(resolved, "params.json")
    if paths.exists(params_json):
        raw = paths.read_json(params_json)
        is_blt = any(
            isinstance(v, Mapping) and "dim_global" in v for v in (raw, raw.get("model"), raw.get("args")) if v
        )
        if not is_blt:
            from blt_jax.convert.meta import load_meta_entropy

            return load_meta_entropy(resolved)
    loaded = load_dir(resolved)
    if loaded.entropy_params is None:
        raise CheckpointError(f"{path}: the checkpoint has no entropy LM (patcher)")
    return model_kind(loaded.config).entropy_lm, loaded.entropy_params
