"""Patches that are a token LM's tokens (patching mode "bpe"): where each token starts, and which
token each patch is, for byteification's first stage (`blt_jax.byteify`).

A token LM's tokenizer is found beside its model: a directory of ours (`blt_jax.json` says how to
read the `tokenizer.json` beside it: `tokenizer_record`), a Hugging Face directory (`tokenizer.json`,
BOS and EOS from `config.json`), or a token LM's training run (its BPE tokenizer's copy).

A document's stream is BOS + its bytes + EOS (`blt_jax.tokenizer.encode`). Its "units" mark, at the
first position of each token, the token's id in the teacher's vocabulary (BOS and EOS at theirs),
and -1 everywhere else; patch starts are the positions of units. The packer turns them into each
patch's teacher id and whether the patch is exactly that token (`packing.pack_row`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from blt_jax import paths
from blt_jax.config import MODEL_CONFIG_FILE
from blt_jax.errors import InputError, NotFound
from blt_jax.tokenizer import TextLike, encode

TOKENIZER_FILE = "tokenizer.json"
RECORD_KEY = "tokenizer"  # the entry of a token LM's `blt_jax.json` that says how to read its tokenizer


def tokenizer_record(tokenizer: Any) -> dict:
    """What `blt_jax.json` keeps of a token LM's tokenizer, so `read_tokenizer` reads it back."""
    from blt_jax.data.bpe import BpeTokenizer

    if isinstance(tokenizer, BpeTokenizer):
        return {"kind": "bpe"}
    return {"kind": "pretrained", "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}


def read_tokenizer(path: str, record: Mapping | None) -> Any:
    """A tokenizer file read as `record` (`tokenizer_record`) says; None without a record."""
    if not record:
        return None
    if record.get("kind") == "bpe":
        from blt_jax.data.bpe import BpeTokenizer

        return BpeTokenizer.load(path)
    from blt_jax.data.pretrained_tokenizer import PretrainedTokenizer

    return PretrainedTokenizer(path, record.get("bos_id"), record.get("eos_id"))


@functools.lru_cache(maxsize=8)
def open_model_tokenizer(directory: str) -> Any:
    """The tokenizer of a token LM: a directory of ours, a Hugging Face directory, or a training run.

    Raises:
      NotFound: nothing there, or no tokenizer beside the model.
    """
    from blt_jax.data.bpe import BpeTokenizer
    from blt_jax.data.pretrained_tokenizer import PretrainedTokenizer

    resolved = paths.resolve(directory)
    if not paths.isdir(resolved):
        raise NotFound(f"{directory}: no such directory")
    file = paths.join(resolved, TOKENIZER_FILE)
    if not paths.exists(file):
        raise NotFound(f"{directory}: no {TOKENIZER_FILE} (the token LM's tokenizer)")
    ours = paths.join(resolved, MODEL_CONFIG_FILE)
    if paths.exists(ours):
        tokenizer = read_tokenizer(file, paths.read_json(ours).get(RECORD_KEY))
        if tokenizer is None:
            raise NotFound(f"{directory}: {MODEL_CONFIG_FILE} records no tokenizer")
        return tokenizer
    if paths.exists(paths.join(resolved, "config.json")):
        return PretrainedTokenizer.from_model_dir(resolved)
    if paths.isdir(paths.join(resolved, "checkpoints")):  # a token LM's run keeps its BPE tokenizer's copy
        return BpeTokenizer.load(file)
    raise InputError(f"{directory}: {TOKENIZER_FILE} without a model beside it (blt_jax.json or config.json)")


def token_units(tokenizer: Any, data: TextLike) -> tuple[np.ndarray, np.ndarray]:
    """A document's byte stream and its teacher units.

    Args:
      tokenizer: has `pieces(data) -> (ids, byte starts)`, `bos_id`, `eos_id`.
      data: the document.

    Returns:
      (tokens int32 [L]: BOS + bytes + EOS, units int32 [L]: the teacher id of the token starting at
      each position, -1 where none does, -2 where a patch starts that is no single teacher token
      (tokens sharing a start: one covers no byte of its own; BOS or EOS of a teacher without them)).
    """
    tokens = encode(data)
    ids, starts = tokenizer.pieces(data)
    units = np.full(len(tokens), -1, np.int32)
    # BOS and EOS are patches of their own (a teacher without such an id has no token for them: -2).
    units[0] = -2 if tokenizer.bos_id is None else tokenizer.bos_id
    units[-1] = -2 if tokenizer.eos_id is None else tokenizer.eos_id
    if len(ids):
        positions = starts + 1  # after BOS
        alone = np.ones(len(ids), bool)
        alone[:-1] = positions[1:] != positions[:-1]
        alone[1:] &= positions[1:] != positions[:-1]
        units[positions[alone]] = ids[alone]
        shared = np.unique(positions[~alone])
        units[shared] = -2  # starts a patch, but of several tokens
    return tokens, units


def unit_starts(units: np.ndarray) -> np.ndarray:
    """bool [L] patch starts of a stream's units (document convention)."""
    return units != -1
