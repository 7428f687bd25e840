"""A byte-level BPE tokenizer that represents every byte string exactly (the BPE transformer baseline).

Ids follow `blt_jax.tokenizer`: 0..3 are the specials (PAD/BOE, BOS, EOS, unused), and BPE token t
has id t + OFFSET (4). Every token stands for a fixed byte string; `token_bytes[id]` is its length,
which is how a token model's loss becomes bits per byte of the same bytes a byte model reads (BOS and
EOS count one byte each, as they do as targets of a byte model: see `blt_jax.train.step`).

How bytes stay exact. The `tokenizers` library works on `str`, and its ByteLevel pre-tokenizer turns
a str into the UTF-8 bytes of its characters, so it cannot take invalid UTF-8, and feeding it raw
bytes through some decoding would make one input byte several symbols. Instead, the bytes are
decoded as Latin-1 here, which maps byte b to code point b: a bijection between byte strings and
strings of code points < 256, one character per byte. The tokenizer then sees that string with
  * no normalizer (nothing rewrites a character),
  * a pre-tokenizer that only splits (`Split`, behaviour "isolated": matches and the text between
    them all become pieces, nothing is dropped; the split keeps merges inside word-like runs),
  * a BPE model whose alphabet holds all 256 code points (the trainer's `initial_alphabet`), so no
    character is ever unknown (a BPE model silently drops unknown characters), and no dropout,
  * no added or special tokens (a document containing the text "<s>" is encoded as its bytes; the
    special ids are added here, outside the library).
BPE only concatenates alphabet symbols, so the tokens of a piece concatenate to the piece, the pieces
to the string, and the Latin-1 encoding of each token's string gives back its bytes: decoding is
exact, and each token's byte count is the length of its string. `BpeTokenizer.load` refuses files
that break any of these conditions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from blt_jax import paths
from blt_jax.errors import InputError, MissingDependency, NotFound
from blt_jax.tokenizer import BOS_ID, EOS_ID, OFFSET, TextLike

# The byte alphabet as the tokenizer sees it: byte b is the character chr(b) (Latin-1).
ALPHABET = tuple(chr(b) for b in range(256))
# The smallest vocabulary: the specials, the 256 bytes and at least one merge.
MIN_VOCAB = OFFSET + 256 + 1
# The largest vocabulary (what `blt_jax.config.TokenLMConfig` accepts).
MAX_VOCAB = 1 << 20
# Pairs seen once are not merged: such merges only memorise the training text.
MIN_PAIR_COUNT = 2
# Word-like pieces, GPT-2 style, on the Latin-1 view of the bytes: English contractions, letters
# (any byte >= 0x80 counts as a letter, so a multi-byte UTF-8 character stays inside its word), digits,
# other symbols, each with one optional leading space; runs of whitespace keep their last space for
# the next word. The split only decides where merges may not cross; it never changes a byte.
SPLIT_PATTERN = (
    r"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z\u0080-\u00ff]+| ?[0-9]+"
    r"| ?[^\t\n\v\f\r A-Za-z0-9\u0080-\u00ff]+|[\t\n\v\f\r ]+(?![^\t\n\v\f\r ])|[\t\n\v\f\r ]+"
)
INSTALL = "BPE tokenizers need the `tokenizers` package: pip install tokenizers"


def library():
    """The `tokenizers` module.

    Raises:
      MissingDependency: it is not installed (saying how to install it).
    """
    try:
        import tokenizers
    except ImportError:
        raise MissingDependency(INSTALL) from None
    return tokenizers


def _as_bytes(data: TextLike) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", errors="ignore")  # as `blt_jax.tokenizer.encode` does
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"encode() expects bytes or str, got {type(data).__name__}")


def train_bpe(texts: Iterable[bytes], vocab_size: int, path: str) -> BpeTokenizer:
    """Trains a byte-exact BPE tokenizer on documents and writes it to `path` (a tokenizer JSON file).

    The same documents in the same order give the same file.

    Args:
      texts: the training documents (raw bytes, any encoding or none).
      vocab_size: the model vocabulary wanted, specials included (4 + 256 bytes + merges); a text
        with too few repeated pairs yields fewer merges, so the result may be smaller.
      path: where to write it (relative, `~` or gs://); its local parent directories are created.

    Returns:
      The trained tokenizer.

    Raises:
      InputError: vocab_size outside [MIN_VOCAB, MAX_VOCAB].
      MissingDependency: `tokenizers` is not installed.
    """
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, (int, np.integer))
        or not MIN_VOCAB <= vocab_size <= MAX_VOCAB
    ):
        raise InputError(
            f"BPE vocab_size must be an integer in [{MIN_VOCAB}, {MAX_VOCAB}] ({OFFSET} specials + "
            f"256 bytes + at least one merge), got {vocab_size!r}"
        )
    lib = library()
    tokenizer = lib.Tokenizer(lib.models.BPE())
    tokenizer.pre_tokenizer = lib.pre_tokenizers.Split(lib.Regex(SPLIT_PATTERN), behavior="isolated")
    trainer = lib.trainers.BpeTrainer(
        vocab_size=int(vocab_size) - OFFSET,
        min_frequency=MIN_PAIR_COUNT,
        initial_alphabet=list(ALPHABET),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator((_as_bytes(t).decode("latin-1") for t in texts), trainer)
    path = paths.resolve(path)
    if not paths.is_uri(path):
        paths.makedirs(os.path.dirname(path))
    text = tokenizer.to_str()
    paths.write_text(path, text)
    return BpeTokenizer(_checked(json.loads(text), path), text, path)


def _checked(spec: Any, path: str) -> dict[str, int]:
    """The BPE vocabulary {token string: BPE id} of a parsed tokenizer file, after checking that it
    encodes every byte string exactly (the conditions of the module docstring).

    Raises:
      InputError: naming the first condition it breaks.
    """

    def fail(reason: str):
        raise InputError(f"{path}: not a byte-exact BPE tokenizer written by train_bpe ({reason})")

    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        fail("no tokenizer model in it")
    model = spec["model"]
    if model.get("type") != "BPE":
        fail(f"its model is {model.get('type')!r}, not BPE")
    if spec.get("normalizer") is not None:
        fail("it has a normalizer, which would rewrite bytes")
    pre = spec.get("pre_tokenizer")
    splits_only = isinstance(pre, dict) and pre.get("type") == "Split" and pre.get("behavior") != "Removed"
    if pre is not None and not splits_only:
        fail("its pre-tokenizer may change or drop bytes; only an isolating Split is allowed")
    if spec.get("added_tokens") or spec.get("post_processor") is not None:
        fail("it has added tokens or a post-processor; the special ids are added outside it")
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        fail("BPE dropout or subword affixes are set")
    vocab = model.get("vocab")
    if (
        not isinstance(vocab, dict)
        or not all(isinstance(i, int) for i in vocab.values())
        or sorted(vocab.values()) != list(range(len(vocab)))
    ):
        fail("its vocabulary ids are not 0..V-1")
    if any(not token or max(map(ord, token)) > 255 for token in vocab):
        fail("a token holds a character outside the byte alphabet")
    missing = [b for b, symbol in enumerate(ALPHABET) if symbol not in vocab]
    if missing:
        fail(f"{len(missing)} byte value(s) have no token, e.g. {missing[0]:#04x}")
    return vocab


class BpeTokenizer:
    """Encodes bytes to ids (specials 0..3, BPE tokens from OFFSET) and back, exactly.

    Use `train_bpe` or `BpeTokenizer.load`.

    Attributes:
      path: the tokenizer file.
      vocab_size: V, the model vocabulary (specials included).
      token_bytes: int32 [V], the bytes each id stands for (PAD 0, BOS and EOS 1, unused special 0).
    """

    def __init__(self, vocab: dict[str, int], text: str, path: str):
        """Use `train_bpe` or `BpeTokenizer.load`: `vocab` is the checked vocabulary of the tokenizer
        file `text` (its JSON) read from `path`."""
        self.path = path
        lib = library()
        try:
            self._tokenizer = lib.Tokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - the library's own parse errors (its exception types vary)
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise InputError(f"{path}: the tokenizers library cannot read it ({first})") from None
        strings = [""] * len(vocab)
        for token, index in vocab.items():
            strings[index] = token
        # Every token's bytes laid end to end, with each id's start: decoding is one gather.
        pieces = [s.encode("latin-1") for s in strings]
        lengths = np.array([0] * OFFSET + [len(p) for p in pieces], np.int32)
        self._buffer = np.frombuffer(b"".join(pieces), np.uint8)
        wide = lengths[OFFSET:].astype(np.int64)
        self._starts = np.concatenate([np.zeros(OFFSET, np.int64), np.cumsum(wide) - wide])
        self._lengths = lengths
        self.vocab_size = OFFSET + len(vocab)
        token_bytes = lengths.copy()
        token_bytes[[BOS_ID, EOS_ID]] = 1  # counted as one byte each, like a byte model's BOS/EOS targets
        token_bytes.setflags(write=False)
        self.token_bytes = token_bytes

    @classmethod
    def load(cls, path: str) -> BpeTokenizer:
        """Reads a tokenizer file written by `train_bpe`.

        Raises:
          NotFound: no such file. InputError: not such a tokenizer. MissingDependency: no `tokenizers`.
        """
        path = paths.resolve(path)
        try:
            text = paths.read_bytes(path).decode("utf-8", errors="replace")
        except NotFound:
            raise NotFound(f"{path}: no such tokenizer file (train_bpe writes one)") from None
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a tokenizer file (not JSON: {e})") from None
        return cls(_checked(spec, path), text, path)

    def encode(self, data: TextLike, add_bos: bool = True, add_eos: bool = True) -> np.ndarray:
        """Token ids of raw bytes (a str is encoded as UTF-8 first).

        Returns:
          int32 [L]: BOS, the BPE tokens (ids >= OFFSET), EOS.
        """
        ids = self._tokenizer.encode(_as_bytes(data).decode("latin-1")).ids
        out = np.empty(len(ids) + add_bos + add_eos, np.int32)
        out[int(add_bos) : len(out) - int(add_eos)] = np.asarray(ids, np.int32) + OFFSET
        if add_bos:
            out[0] = BOS_ID
        if add_eos:
            out[-1] = EOS_ID
        return out

    # The ids BLT's byte vocabulary also gives BOS and EOS (what teacher-token patches read).
    bos_id = BOS_ID
    eos_id = EOS_ID

    def pieces(self, data: TextLike) -> tuple[np.ndarray, np.ndarray]:
        """The tokens of some bytes (no specials) and the byte where each starts.

        Returns:
          (ids int32 [T], starts int64 [T]: exact, as every token stands for fixed bytes).
        """
        ids = self.encode(data, add_bos=False, add_eos=False)
        lengths = self._lengths[ids].astype(np.int64)
        return ids, np.cumsum(lengths) - lengths

    def token_strings(self) -> list[bytes | None]:
        """The bytes each id stands for, [vocab_size] (None for the specials)."""
        return [None] * OFFSET + [
            self._buffer[start : start + length].tobytes()
            for start, length in zip(self._starts[OFFSET:], self._lengths[OFFSET:])
        ]

    def decode(self, ids: Iterable[int]) -> bytes:
        """The bytes of token ids; special ids (< OFFSET) and ids out of range are dropped."""
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), np.int64).reshape(-1)
        arr = arr[(arr >= OFFSET) & (arr < self.vocab_size)]
        lengths = self._lengths[arr].astype(np.int64)
        # Byte k of the output is byte (k - first output byte of its token) of that token's bytes.
        ends = np.cumsum(lengths)
        index = np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(self._starts[arr] - (ends - lengths), lengths)
        return self._buffer[index].tobytes()
