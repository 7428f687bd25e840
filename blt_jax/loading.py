"""Reading weights from model directories (the one owner): our layout, the Hugging Face one and
Meta's, detected. Training runs are read by `blt_jax.train.runs`, which builds on this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from blt_jax import paths
from blt_jax.config import EntropyLMConfig
from blt_jax.convert.layout import WeightError
from blt_jax.errors import InputError, NotFound
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
    """"native", "hf" or "meta" for a model directory.

    Raises:
      NotFound: none of the layouts is there. InputError: an unreadable config.json.
    """
    from blt_jax.convert.native import CONFIG_FILE

    if paths.exists(paths.join(path, CONFIG_FILE)):
        return "native"
    config_json = paths.join(path, "config.json")
    if paths.exists(config_json):
        cfg = paths.read_json(config_json)
        if "encoder_config" in cfg or cfg.get("model_type") == "blt":
            return "hf"
    if paths.exists(paths.join(path, "params.json")) and paths.exists(paths.join(path, "consolidated.pth")):
        return "meta"
    raise NotFound(
        f"{path}: not a BLT checkpoint directory. Expected one of: blt_jax.json + params.safetensors "
        "(ours); config.json + model.safetensors (Hugging Face BltForCausalLM); params.json + "
        "consolidated.pth (Meta); checkpoints/ (a blt-jax training run)"
    )


def _require_dir(path: str) -> str:
    resolved = paths.resolve(path)
    if not paths.isdir(resolved):
        raise NotFound(f"{path}: no such directory")
    return resolved


def load_model_dir(path: str, entropy_path: str | None = None, dtype: Any = np.float32):
    """(config, params, entropy params or None) of a BLT model directory in any layout (detected).

    `entropy_path` is Meta's separate entropy model directory. Shapes are checked by `BLTModel`.
    """
    resolved = _require_dir(path)
    if paths.is_uri(resolved):  # the readers memory-map local files: read a local copy
        with paths.local_dir(resolved) as local:
            return load_model_dir(local, entropy_path, dtype)
    layout = detect_layout(resolved)
    if layout == "native":
        from blt_jax.convert.native import load_native

        config, params, entropy = load_native(resolved, np.dtype(dtype))
        if isinstance(config, EntropyLMConfig):
            raise CheckpointError(f"{path} holds an entropy LM, not a BLT")
    elif layout == "hf":
        from blt_jax.convert.hf import load_hf

        config, params, entropy = load_hf(resolved, np.dtype(dtype))
    else:
        from blt_jax.convert.meta import load_meta

        config, params, entropy = load_meta(resolved, None if entropy_path is None else paths.resolve(entropy_path),
                                            np.dtype(dtype))
    return config, params, entropy


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
        if isinstance(config, EntropyLMConfig):
            check_tree(params, abstract_params(config), path)
            return config, params
        if entropy is None or config.entropy_model is None:
            raise CheckpointError(f"{path}: this BLT was saved without an entropy LM")
        check_tree(entropy, abstract_params(config.entropy_model), path)
        return config.entropy_model, entropy
    params_json = paths.join(resolved, "params.json")
    if paths.exists(params_json):
        raw = paths.read_json(params_json)
        is_blt = any(isinstance(v, Mapping) and "dim_global" in v for v in (raw, raw.get("model"), raw.get("args")) if v)
        if not is_blt:
            from blt_jax.convert.meta import load_meta_entropy

            return load_meta_entropy(resolved)
    config, _, entropy = load_model_dir(resolved)
    if entropy is None:
        raise CheckpointError(f"{path}: the checkpoint has no entropy LM (patcher)")
    return config.entropy_model, entropy


