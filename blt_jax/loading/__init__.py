"""Reading weights, from wherever they are (the one owner):

    directories.py  model directories, layout detected (ours, Hugging Face's BLT or Llama-family,
                    Meta's), and `.safetensors` files of named tensors
    runs.py         training runs of ours, from their checkpoints alone, and any model in either form
                    (`load_model`, `load_blt`, `load_entropy_lm`); the starting weights of a run
    init_from.py    `train.init_from`: parts of a tree filled from several sources

How a model of each kind loads (its patcher, its standalone form) is the kind's to say (`ModelKind`
hooks): nothing here branches on kind names.

The names of runs.py are imported on first use, so reading a model directory does not load the
training stack (the experiment configuration's data pipeline, Orbax).
"""

from __future__ import annotations

import importlib
from typing import Any

from blt_jax.loading.directories import (
    TOKENIZER_FILE,
    TOKENIZER_KEY,
    CheckpointError,
    LoadedModel,
    check_tree,
    detect_layout,
    is_tensors_file,
    load_dir,
    load_entropy_dir,
    load_tensors,
)

_FROM_RUNS = (
    "is_training_run",
    "load_blt",
    "load_entropy_lm",
    "load_initial_params",
    "load_model",
    "read_run",
    "read_run_config",
)

__all__ = [
    "TOKENIZER_FILE",
    "TOKENIZER_KEY",
    "CheckpointError",
    "LoadedModel",
    "check_tree",
    "detect_layout",
    "is_tensors_file",
    "load_dir",
    "load_entropy_dir",
    "load_tensors",
    *_FROM_RUNS,
]


def __getattr__(name: str) -> Any:
    if name in _FROM_RUNS:
        return getattr(importlib.import_module("blt_jax.loading.runs"), name)
    raise AttributeError(f"module 'blt_jax.loading' has no attribute {name!r}")
