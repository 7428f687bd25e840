"""What a served model's ids stand for: text in as ids (BOS first), ids out as bytes.

A BLT and a byte LM read bytes (`blt_jax.tokenizer`: one byte per id past the specials); a token LM
reads the ids of its tokenizer (the study's BPE, or a Llama-family `tokenizer.json`), each standing for
one or more bytes. Serving counts, trims and streams bytes either way, so a request's `max_tokens`
means the same for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from blt_jax import tokenizer as byte_tokenizer


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The ids of one model.

    Attributes:
      pieces: the bytes each id stands for, [V] (b"" for specials: they print nothing).
      bos_id: the id a prompt starts with, or None (Qwen2-style models start with the text itself).
      eos_id: the id that ends a completion, or None (completions end at their budget or a stop string).
      encoder: raw bytes -> int32 [L] ids, BOS first, no EOS.
    """

    pieces: tuple[bytes, ...]
    bos_id: int | None
    eos_id: int | None
    encoder: Callable[[bytes], np.ndarray]

    @property
    def size(self) -> int:
        return len(self.pieces)

    @property
    def allowed(self) -> np.ndarray:
        """bool [V]: the ids generation may choose: those that stand for bytes, and EOS (never BOS,
        padding or another special, which would print nothing and mean nothing)."""
        return np.array([bool(piece) or i == self.eos_id for i, piece in enumerate(self.pieces)])

    @property
    def placeholder(self) -> np.ndarray:
        """int32 [1]: the prompt of an idle row (its output is never read)."""
        first = next((i for i in (self.bos_id, self.eos_id) if i is not None), 0)
        return np.array([first], np.int32)

    def encode(self, text: str | bytes) -> np.ndarray:
        """int32 [L] ids of a prompt (UTF-8 for text), BOS first, no EOS."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.asarray(self.encoder(data), np.int32)


def byte_vocabulary() -> Vocabulary:
    """The byte vocabulary of BLTs and byte LMs."""
    pieces = tuple(byte_tokenizer.decode_bytes([i]) for i in range(byte_tokenizer.VOCAB_SIZE))
    return Vocabulary(
        pieces,
        byte_tokenizer.BOS_ID,
        byte_tokenizer.EOS_ID,
        lambda data: byte_tokenizer.encode(data, add_bos=True, add_eos=False),
    )


def token_vocabulary(tokenizer, model_vocab_size: int) -> Vocabulary:
    """The vocabulary of a token LM's tokenizer (`data.bpe.BpeTokenizer` or
    `data.pretrained_tokenizer.PretrainedTokenizer`), padded with empty pieces to the model's
    `vocab_size` (models often carry more ids than their tokenizer uses)."""
    strings = tokenizer.token_strings()
    pieces = tuple(s or b"" for s in strings) + (b"",) * max(0, model_vocab_size - len(strings))
    return Vocabulary(
        pieces,
        None if tokenizer.bos_id is None else int(tokenizer.bos_id),
        None if tokenizer.eos_id is None else int(tokenizer.eos_id),
        lambda data: tokenizer.encode(data, add_bos=True, add_eos=False),
    )
