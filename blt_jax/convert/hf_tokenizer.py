"""A byte tokenizer for Hugging Face exports: what `transformers.AutoTokenizer.from_pretrained(DIR)`
loads as a `PreTrainedTokenizerFast`, encoding text exactly as `blt_jax.tokenizer.encode(text,
add_eos=False)` does (BOS, then one token per UTF-8 byte at id byte + 4).

transformers ships no BLT tokenizer, and tools built on it (lm-eval's `hf` backend, pipelines) need
one. The `tokenizers` library has no byte model, so this is a BPE model with no merges over the 256
byte-level symbols (GPT-2's printable stand-ins for bytes): the ByteLevel pre-tokenizer, without its
regex split or prefix space, turns each UTF-8 byte into its symbol, and with no merges every symbol
stays one token. The four special ids sit at the front of the same vocabulary, so the model's vocab
size is 260 and ids line up with ours. A template post-processor prepends BOS; the ByteLevel decoder
turns symbols back into bytes (invalid UTF-8 becomes U+FFFD, as `blt_jax.tokenizer.decode` does).

The files are written as plain JSON, so exporting needs neither `tokenizers` nor `transformers`
installed; the tests load them with both.
"""

from __future__ import annotations

import json
import os
from typing import Any

from blt_jax.tokenizer import BOE_ID, BOS_ID, BPE_ID, EOS_ID, OFFSET, PAD_ID, SPECIAL_NAMES, VOCAB_SIZE

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

BOS_TOKEN = SPECIAL_NAMES[BOS_ID]
EOS_TOKEN = SPECIAL_NAMES[EOS_ID]
PAD_TOKEN = SPECIAL_NAMES[PAD_ID]  # BOE: training batches pad with it, so padding looks the same


def byte_symbols() -> list[str]:
    """The byte-level alphabet of the `tokenizers` ByteLevel pre-tokenizer, indexed by byte value.

    Bytes that are printable, non-space Latin-1 characters stand for themselves; every other byte
    (controls, space, DEL, NBSP, soft hyphen...) takes the next code point from U+0100 on, in byte
    order. This is the mapping the pre-tokenizer applies, so the vocabulary must use the same symbols.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    symbols, spare = [], 0x100
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(spare))
            spare += 1
    return symbols


def _special_tokens() -> list[tuple[int, str]]:
    return [(i, SPECIAL_NAMES[i]) for i in (BOE_ID, BOS_ID, EOS_ID, BPE_ID)]


def tokenizer_json() -> dict[str, Any]:
    """The `tokenizer.json` document (the `tokenizers` library's serialisation of the tokenizer)."""
    vocab = {name: i for i, name in _special_tokens()}
    vocab.update({symbol: byte + OFFSET for byte, symbol in enumerate(byte_symbols())})
    assert len(vocab) == VOCAB_SIZE, "a byte symbol collides with a special token's name"
    added = [
        dict(id=i, content=name, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for i, name in _special_tokens()
    ]
    bos = {"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # No regex split (it would only cut the text into words that are re-split into bytes anyway)
        # and no prefix space (ours encodes the text as it is).
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        # A pair is one text, BOS first: a BLT reads the bytes of context + continuation, nothing between.
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {BOS_TOKEN: {"id": BOS_TOKEN, "ids": [BOS_ID], "tokens": [BOS_TOKEN]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,  # every byte has a symbol: nothing is unknown
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def tokenizer_config(model_max_length: int | None = None) -> dict[str, Any]:
    """The `tokenizer_config.json` document: the class to load, the special tokens, and settings
    that keep transformers from changing text (no space clean-up on decode, and special-token names
    inside text encoded as their bytes, as ours does, not as the special ids).

    Args:
      model_max_length: the longest input the tokenizer reports (None: transformers' "no limit").
    """
    decoder = {
        str(i): dict(content=name, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for i, name in _special_tokens()
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "added_tokens_decoder": decoder,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "padding_side": "right",
    }
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    return config


def save_byte_tokenizer(directory: str, model_max_length: int | None = None) -> list[str]:
    """Writes the byte tokenizer's files into `directory` (created if missing).

    Args:
      directory: a local directory (an HF export's).
      model_max_length: see `tokenizer_config`.

    Returns:
      The names of the files written.
    """
    os.makedirs(directory, exist_ok=True)
    documents = {
        TOKENIZER_FILE: tokenizer_json(),
        CONFIG_FILE: tokenizer_config(model_max_length),
        SPECIAL_TOKENS_FILE: {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN},
    }
    for name, document in documents.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            # Byte symbols beyond ASCII are kept as characters (ensure_ascii=False), as transformers writes them.
            json.dump(document, f, indent=2, ensure_ascii=False)
    return list(documents)
