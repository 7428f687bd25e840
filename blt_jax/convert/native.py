"""Our own export format: `blt_jax.json` (config) + `params.safetensors` (+ `entropy.safetensors`).

Parameters are stored in our layout under '/'-joined tree paths, in their own dtype. Training
checkpoints (Orbax) are a separate, resumable format; this one is for sharing and for `from_pretrained`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from blt_jax import paths
from blt_jax.config import MODEL_CONFIG_FILE, ModelConfig
from blt_jax.convert.safetensors_io import read_safetensors, write_safetensors
from blt_jax.errors import InputError, NotFound
from blt_jax.models import config_to_dict, model_config_from_dict

CONFIG_FILE = MODEL_CONFIG_FILE
PARAMS_FILE = "params.safetensors"
ENTROPY_FILE = "entropy.safetensors"
FORMAT_VERSION = 1


def _flatten(params: Mapping) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}


def _unflatten(tensors: Mapping[str, np.ndarray], dtype) -> dict:
    flat = {tuple(k.split("/")): np.asarray(v).astype(dtype) for k, v in tensors.items()}
    return traverse_util.unflatten_dict(flat)


def save_native(
    directory: str,
    config: ModelConfig,
    params: Mapping,
    entropy_params: Mapping | None = None,
    extra: Mapping | None = None,
) -> None:
    """Writes a model directory (a BLT, an entropy LM alone, or a token LM) that `blt_jax.from_pretrained` /
    `blt_jax.api.load_entropy_model` read back. `extra` entries are added to its `blt_jax.json` (a
    token LM's tokenizer record, `loading.TOKENIZER_KEY`)."""
    os.makedirs(directory, exist_ok=True)
    paths.write_json(
        os.path.join(directory, CONFIG_FILE),
        {"format_version": FORMAT_VERSION, "model": config_to_dict(config), **(extra or {})},
    )
    write_safetensors(os.path.join(directory, PARAMS_FILE), _flatten(params))
    if entropy_params is not None:
        write_safetensors(os.path.join(directory, ENTROPY_FILE), _flatten(entropy_params))


def read_meta(directory: str) -> dict:
    """The parsed `blt_jax.json` of a directory written by `save_native`."""
    config_path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(config_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{config_path}: unreadable ({e})") from e
    if not isinstance(meta, dict) or "model" not in meta:
        raise InputError(f"{config_path}: no model configuration in it")
    return meta


def read_tensors(path: str, dtype=np.float32) -> dict:
    """A `.safetensors` file of '/'-named tensors as a parameter tree (a part of a model: what
    `train.init_from` reads from such a file)."""
    return _unflatten(read_safetensors(path), dtype)


def read_param(directory: str, name: str) -> np.ndarray:
    """One parameter of a directory written by `save_native`, by its '/'-joined path, memory-mapped
    (a large model's embedding table without reading the rest).

    Raises:
      NotFound: the directory has no such parameter.
    """
    tensors = read_safetensors(os.path.join(directory, PARAMS_FILE))
    if name not in tensors:
        raise NotFound(f"{directory}: no parameter {name}")
    return tensors[name]


def load_native(directory: str, dtype=np.float32):
    """Reads a directory written by `save_native`. Returns (config, params, entropy params or None).

    Shapes are checked by the caller against the config's abstract parameters.
    """
    meta = read_meta(directory)
    if not os.path.exists(os.path.join(directory, PARAMS_FILE)):
        raise NotFound(f"{directory}: {CONFIG_FILE} without {PARAMS_FILE}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{directory}: {CONFIG_FILE} has format_version {version!r}; this blt_jax reads {FORMAT_VERSION}"
        )
    config = model_config_from_dict(meta["model"], "model")
    params = _unflatten(read_safetensors(os.path.join(directory, PARAMS_FILE)), dtype)
    entropy_path = os.path.join(directory, ENTROPY_FILE)
    entropy = _unflatten(read_safetensors(entropy_path), dtype) if os.path.exists(entropy_path) else None
    return config, params, entropy
