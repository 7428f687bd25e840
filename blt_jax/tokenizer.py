"""Byte tokenizer of the reference BLT: token id = byte + 4, with four special ids below.

The reference reserves ids 0..3 for BOE (also the padding id of training batches and the
zero prefix of the hash windows), BOS, EOS (the document separator of every block-causal mask)
and BPE (a delimiter only used by the unreleased "bpe" patching mode).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

import numpy as np

BOE_ID = 0
PAD_ID = 0  # Training batches pad with BOE.
BOS_ID = 1
EOS_ID = 2
BPE_ID = 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET

TextLike = Union[str, bytes, bytearray, memoryview]


def encode(text: TextLike, add_bos: bool = True, add_eos: bool = True) -> np.ndarray:
    """Encodes text or raw bytes into token ids.

    Args:
      text: a `str` (encoded as UTF-8; unencodable surrogates are dropped, as the reference does)
        or raw bytes, passed through untouched (BLT is a byte model).
      add_bos: prepend BOS (id 1).
      add_eos: append EOS (id 2).

    Returns:
      int32 array [L] with values in [0, 260).
    """
    if isinstance(text, str):
        raw = text.encode("utf-8", errors="ignore")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
    else:
        raise TypeError(f"encode() expects str or bytes, got {type(text).__name__}")
    ids = np.frombuffer(raw, dtype=np.uint8).astype(np.int32) + OFFSET
    parts = []
    if add_bos:
        parts.append(np.array([BOS_ID], np.int32))
    parts.append(ids)
    if add_eos:
        parts.append(np.array([EOS_ID], np.int32))
    return np.concatenate(parts) if len(parts) > 1 else ids


def decode_bytes(ids: Iterable[int]) -> bytes:
    """Maps token ids back to raw bytes, dropping special ids (< 4) and anything out of range."""
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
    arr = arr.astype(np.int64, copy=False)
    keep = arr[(arr >= OFFSET) & (arr < VOCAB_SIZE)]
    return (keep - OFFSET).astype(np.uint8).tobytes()


def decode(ids: Iterable[int]) -> str:
    """Decodes token ids to text; never raises.

    Special ids and out-of-range values are dropped; invalid UTF-8 becomes U+FFFD (the reference
    silently drops it, which hides corrupted output; a replacement character shows it).
    """
    return decode_bytes(ids).decode("utf-8", errors="replace")


# How the special ids are shown in every display (rendered text, plot ticks).
SPECIAL_NAMES = {BOE_ID: "<boe>", BOS_ID: "<s>", EOS_ID: "</s>", BPE_ID: "<bpe>"}


def render(ids: Iterable[int]) -> str:
    """Human-readable text of ids for displays (patches, plots): specials shown as <s>, </s>, ..."""
    out, run = [], []
    for i in (int(x) for x in ids):
        if i in SPECIAL_NAMES:
            out.append(bytes(run).decode("utf-8", errors="replace"))
            run = []
            out.append(SPECIAL_NAMES[i])
        elif OFFSET <= i < VOCAB_SIZE:
            run.append(i - OFFSET)
    out.append(bytes(run).decode("utf-8", errors="replace"))
    return "".join(out)
