import numpy as np
import pytest

from blt_jax import tokenizer as tk


def test_encode_offsets_and_specials():
    ids = tk.encode("Hé")
    assert ids.dtype == np.int32
    # 'H' = 0x48, 'é' = 0xC3 0xA9 in UTF-8; every byte + 4, BOS first, EOS last.
    assert ids.tolist() == [tk.BOS_ID, 0x48 + 4, 0xC3 + 4, 0xA9 + 4, tk.EOS_ID]
    assert tk.encode("Hé", add_bos=False, add_eos=False).tolist() == [0x48 + 4, 0xC3 + 4, 0xA9 + 4]
    assert tk.VOCAB_SIZE == 260 and (tk.BOE_ID, tk.BOS_ID, tk.EOS_ID, tk.BPE_ID) == (0, 1, 2, 3)


def test_bytes_pass_through_untouched():
    raw = bytes(range(256))
    ids = tk.encode(raw, add_bos=False, add_eos=False)
    assert ids.tolist() == [b + 4 for b in range(256)]
    assert tk.decode_bytes(ids) == raw


def test_round_trip_text():
    text = "Byte Latent Transformer — ✓ 日本語"
    assert tk.decode(tk.encode(text)) == text


def test_decode_never_raises():
    # Special ids, out-of-range ids and a truncated UTF-8 sequence (0xE2 0x82 without its last byte).
    ids = [0, 1, 2, 3, 0xE2 + 4, 0x82 + 4, 300, -5, ord("a") + 4]
    out = tk.decode(ids)
    assert out == "\ufffda"
    assert tk.decode([]) == ""


def test_encode_rejects_other_types():
    with pytest.raises(TypeError, match="str or bytes"):
        tk.encode(123)
