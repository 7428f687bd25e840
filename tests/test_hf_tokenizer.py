"""The byte tokenizer of HF exports: `AutoTokenizer.from_pretrained` loads it as a fast tokenizer whose
ids are ours (`blt_jax.tokenizer.encode(text, add_eos=False)`) on any text, that decodes back to the
text, pads with id 0 on the right, and that every `save_hf` export carries."""

import os

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from user import TINY

from blt_jax.convert import hf_tokenizer
from blt_jax.convert.hf import save_hf
from blt_jax.experiment import load_experiment
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.params import abstract_params
from blt_jax.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, decode, encode

TRICKY = [
    "hello world",
    "  leading spaces",
    "trailing spaces  ",
    "é中😀",
    "\t\n",
    "",
    " ",
    "a\r\nb\x00c\x7f\x1b[0m",
    "\u00a0\u00ad non-breaking space, soft hyphen",  # bytes the byte-level alphabet remaps
    "def f(x):\n    return x  # ünïcödé\n",
    "<s> literal </s> and <boe><bpe>",  # special-token names inside text are just bytes, as ours
    "ĠĊ",  # the byte-level stand-ins for space and newline, as real text
    "🏳️‍🌈 zero width\u200bjoiner",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    hf_tokenizer.save_byte_tokenizer(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))


def test_alphabet_is_the_byte_level_pre_tokenizers():
    symbols = hf_tokenizer.byte_symbols()
    assert len(set(symbols)) == 256 and set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())


def test_loads_as_a_fast_tokenizer_with_our_special_ids(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert tokenizer.vocab_size == len(tokenizer) == VOCAB_SIZE  # no id beyond the model's logits
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("text", TRICKY)
def test_ids_equal_ours_and_decode_round_trips(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == encode(text, add_eos=False).tolist()
    assert tokenizer.encode(text, add_special_tokens=False) == encode(text, add_bos=False, add_eos=False).tolist()
    assert tokenizer.decode(ids, skip_special_tokens=True) == text == decode(ids)
    assert tokenizer.decode(ids) == "<s>" + text  # BOS shown by name


def test_every_byte_is_one_token_and_invalid_utf8_decodes_as_ours(tokenizer):
    assert tokenizer.convert_tokens_to_ids(hf_tokenizer.byte_symbols()) == list(range(4, VOCAB_SIZE))
    broken = [4 + 0xC3, 4 + ord("a"), 4 + 0xFF]  # a cut two-byte character, then an invalid byte
    assert tokenizer.decode(broken) == decode(broken)


def test_batches_pad_on_the_right_with_id_0(tokenizer):
    batch = tokenizer(["ab", "é"], padding=True)
    assert batch["input_ids"] == [[BOS_ID, 4 + 97, 4 + 98], [BOS_ID, 4 + 0xC3, 4 + 0xA9]]
    batch = tokenizer(["abc", ""], padding=True)
    assert batch["input_ids"][1] == [BOS_ID, PAD_ID, PAD_ID, PAD_ID]
    assert batch["attention_mask"][1] == [1, 0, 0, 0]


def test_tokenizers_library_reads_the_file_alone(tokenizer, tmp_path):
    hf_tokenizer.save_byte_tokenizer(str(tmp_path))
    raw = Tokenizer.from_file(str(tmp_path / hf_tokenizer.TOKENIZER_FILE))
    text = "x = 'é'\n"
    assert raw.encode(text).ids == encode(text, add_eos=False).tolist()
    assert raw.get_vocab_size(with_added_tokens=False) == VOCAB_SIZE


def test_save_hf_writes_the_tokenizer_beside_the_weights(tmp_path):
    config = experiment_from_dict(load_experiment(TINY)).model
    zeros = lambda tree: jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)
    save_hf(str(tmp_path), config, zeros(abstract_params(config)), zeros(abstract_params(config.entropy_model)))
    names = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))  # config.json says model_type "blt": no BLT class needed
    assert loaded("é中")["input_ids"] == encode("é中", add_eos=False).tolist()
