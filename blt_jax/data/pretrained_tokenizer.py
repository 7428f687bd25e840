"""The tokenizer of a pretrained token LM (`tokenizer.json` of a Hugging Face directory), read with the
`tokenizers` library: token ids of text, and which bytes each token covers (the teacher's token
boundaries, BLT's "bpe" patches, when a BLT is made from the model: `blt_jax.byteify`).

Where each token starts, in bytes of the document:
  * byte-level BPE (GPT-2's `ByteLevel`, as in Llama 3, Qwen2, Olmo): every token string maps back to
    its exact bytes through GPT-2's byte <-> character table, so token lengths in bytes are exact;
  * any other model (SentencePiece-style `Metaspace`, WordPiece): the character offsets the library
    reports, turned into byte offsets of the UTF-8 text.
If the lengths of the first way do not add up to the document (a normalizer rewrote characters), the
second way is used for that document. Bytes that are not UTF-8 reach the library as U+FFFD, one
character per byte, so offsets still count bytes right.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from blt_jax import paths
from blt_jax.data.bpe import library
from blt_jax.errors import InputError, NotFound
from blt_jax.tokenizer import TextLike

TOKENIZER_FILE = "tokenizer.json"
_STRAY = re.compile("[\udc80-\udcff]")  # what `surrogateescape` makes of a byte that is not UTF-8
_BYTE_FALLBACK = re.compile("<0x([0-9A-Fa-f]{2})>")  # SentencePiece's token for a byte it has no piece for
_SPACE_MARK = "\u2581"  # SentencePiece's space


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's table: the character that stands for each byte in byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _uses_byte_level(spec: Mapping[str, Any]) -> bool:
    """Whether a tokenizer.json pre-tokenizes or decodes with GPT-2's ByteLevel."""

    def has(node: Any) -> bool:
        if not isinstance(node, Mapping):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has(child) for child in node.get("pretokenizers", node.get("decoders", [])) or [])

    return has(spec.get("pre_tokenizer")) or has(spec.get("decoder"))


def as_text(data: TextLike) -> tuple[str, np.ndarray]:
    """The text the library reads for some bytes, and the byte offset of each of its characters.

    Returns:
      (text, int64 [C + 1]: byte offset where character c starts; the last entry is the byte count).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    escaped = raw.decode("utf-8", errors="surrogateescape")  # a byte that is not UTF-8 -> one lone surrogate
    points = np.frombuffer(escaped.encode("utf-32-le", errors="surrogatepass"), "<u4")
    widths = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    stray = (points >= 0xDC80) & (points <= 0xDCFF)
    widths[stray] = 1
    text = _STRAY.sub("\ufffd", escaped) if stray.any() else escaped
    return text, np.concatenate([[0], np.cumsum(widths)])


class PretrainedTokenizer:
    """Token ids and token boundaries of a pretrained model's `tokenizer.json`.

    Attributes:
      path: the tokenizer file.
      vocab_size: ids the tokenizer can produce (added tokens included).
      bos_id / eos_id: the ids of the model's BOS and EOS (None when it has none).
    """

    def __init__(self, path: str, bos_id: int | None, eos_id: int | None):
        lib = library()
        self.path = path
        try:
            text = paths.read_bytes(path).decode("utf-8")
            spec = json.loads(text)
            self._tokenizer = lib.Tokenizer.from_str(text)
        except NotFound:
            raise NotFound(f"{path}: no such tokenizer file") from None
        except Exception as e:  # noqa: BLE001 - JSON or the library's own parse errors
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise InputError(f"{path}: not a tokenizer file the tokenizers library reads ({first})") from None
        # Specials are added here, by id; the library's post-processor (which adds them itself and,
        # for byte-level BPE, trims spaces off the offsets) stays out of the way.
        self._tokenizer.post_processor = None
        self.bos_id, self.eos_id = bos_id, eos_id
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self._byte_lengths = None
        self._byte_level = _uses_byte_level(spec)
        if self._byte_level:
            alphabet = _byte_level_alphabet()
            vocab = self._tokenizer.get_vocab(with_added_tokens=False)
            lengths = np.full(self.vocab_size, -1, np.int64)
            for token, index in vocab.items():
                if index < self.vocab_size and all(ch in alphabet for ch in token):
                    lengths[index] = len(token)
            self._byte_lengths = lengths

    @classmethod
    def from_model_dir(cls, directory: str) -> PretrainedTokenizer:
        """The tokenizer of a Hugging Face model directory: `tokenizer.json`, with BOS and EOS from
        `config.json` (or `tokenizer_config.json`'s token strings).

        Raises:
          NotFound: the directory has no tokenizer.json.
        """
        path = paths.join(directory, TOKENIZER_FILE)
        if not paths.exists(path):
            raise NotFound(f"{directory}: no {TOKENIZER_FILE} (the model's tokenizer)")
        config = _read_json(paths.join(directory, "config.json"))
        tok_config = _read_json(paths.join(directory, "tokenizer_config.json"))
        tokenizer = cls(path, None, None)
        tokenizer.bos_id = _special(config.get("bos_token_id"), tok_config.get("bos_token"), tokenizer)
        tokenizer.eos_id = _special(config.get("eos_token_id"), tok_config.get("eos_token"), tokenizer)
        return tokenizer

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def token_strings(self) -> list[bytes | None]:
        """The bytes each id stands for, [vocab_size] (None: a special or added token, or a string that
        is not text of its own).

        Byte-level vocabularies map back exactly through GPT-2's table; SentencePiece-style ones read
        U+2581 as a space and byte-fallback tokens ("<0x41>") as their byte.
        """
        alphabet = _byte_level_alphabet() if self._byte_level else None
        added = set(self._tokenizer.get_added_tokens_decoder())
        out: list[bytes | None] = [None] * self.vocab_size
        for token, index in self._tokenizer.get_vocab(with_added_tokens=False).items():
            if index >= self.vocab_size or index in added:
                continue
            if alphabet is not None:
                if all(ch in alphabet for ch in token):
                    out[index] = bytes(alphabet[ch] for ch in token)
                continue
            fallback = _BYTE_FALLBACK.fullmatch(token)
            out[index] = bytes([int(fallback.group(1), 16)]) if fallback else token.replace(_SPACE_MARK, " ").encode()
        return out

    def encode(self, data: TextLike, add_bos: bool = True, add_eos: bool = True) -> np.ndarray:
        """Token ids of text or bytes: int32 [L] (BOS and EOS where asked for and the model has them)."""
        ids = self.pieces(data)[0]
        head = [self.bos_id] if add_bos and self.bos_id is not None else []
        tail = [self.eos_id] if add_eos and self.eos_id is not None else []
        return np.concatenate([np.asarray(head, np.int32), ids, np.asarray(tail, np.int32)])

    def pieces(self, data: TextLike) -> tuple[np.ndarray, np.ndarray]:
        """The tokens of text or bytes (no specials) and the byte where each starts.

        Returns:
          (ids int32 [T], starts int64 [T] nondecreasing byte offsets into the UTF-8 bytes of `data`,
          the first 0; a token sharing a start with the next covers no byte of its own).
        """
        text, char_bytes = as_text(data)
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, np.int32)
        if not len(ids):
            return ids, np.zeros(0, np.int64)
        if self._byte_lengths is not None:
            lengths = self._byte_lengths[ids]
            if (lengths >= 0).all() and int(lengths.sum()) == int(char_bytes[-1]):
                return ids, np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts = char_bytes[np.minimum(np.asarray([o[0] for o in encoding.offsets], np.int64), len(char_bytes) - 1)]
        starts = np.maximum.accumulate(starts)
        starts[0] = 0
        return ids, starts


def _read_json(path: str) -> dict:
    if not paths.exists(path):
        return {}
    try:
        value = paths.read_json(path)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _special(config_id: Any, token: Any, tokenizer: PretrainedTokenizer) -> int | None:
    """A special id from config.json (an int, or the first of a list), else from the token's string."""
    if isinstance(config_id, list):
        config_id = config_id[0] if config_id else None
    if isinstance(config_id, int) and not isinstance(config_id, bool):
        return config_id
    if isinstance(token, Mapping):  # {"content": "<s>", ...}
        token = token.get("content")
    return tokenizer.token_id(token) if isinstance(token, str) else None
