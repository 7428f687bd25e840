"""Byteification's parts: teacher tokens as patches (units, packed rows), weights from several
sources into parts of a tree, frozen subtrees and learning-rate multiples, the teacher losses, and
`blt-jax byteify` refusing bad input in one line. The end-to-end run is in test_byteify_run.py."""

import os

import jax
import numpy as np
import pytest
import teachers
from user import blt_jax_many

from blt_jax.config import ConfigError
from blt_jax.data.bpe import train_bpe
from blt_jax.data.packing import pack_row
from blt_jax.data.pretrained_tokenizer import PretrainedTokenizer
from blt_jax.data.token_patches import token_units, unit_starts
from blt_jax.models.distill import binary_kl, patch_logprobs
from blt_jax.tokenizer import BOS_ID, EOS_ID

TEXTS = [f"the {i}th line of a small text, with words and numbers {i * 7}\n" for i in range(200)]


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    teachers.byte_level_tokenizer(TEXTS, 300, str(path))
    return PretrainedTokenizer(str(path), 0, 1)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe([t.encode() for t in TEXTS], 400, str(tmp_path_factory.mktemp("bpe") / "tok.json"))


def _spans(tokenizer, data: bytes):
    ids, starts = tokenizer.pieces(data)
    ends = np.append(starts[1:], len(data))
    return ids, [data[s:e] for s, e in zip(starts, ends)]


def test_token_starts_cover_the_bytes_exactly(byte_level, bpe):
    """Byte-level BPE (from its vocabulary), our BPE (exact byte strings) and the offsets path (bytes
    that are not UTF-8): the tokens' byte spans concatenate to the document."""
    for data in (b"the 12th line of a small text, with words\n", "naïve ünïcode — ok\n".encode()):
        for tokenizer in (byte_level, bpe):
            ids, spans = _spans(tokenizer, data)
            assert b"".join(spans) == data and all(spans), (tokenizer, spans)
        assert list(byte_level.pieces(data)[0]) == byte_level._tokenizer.encode(data.decode()).ids
    broken = b"abc \xff\xfe def"  # two bytes that are not UTF-8: one U+FFFD each
    ids, starts = byte_level.pieces(broken)
    assert starts[0] == 0 and np.all(np.diff(starts) >= 0) and starts[-1] < len(broken)


def test_units_mark_each_token_start_with_its_id(bpe):
    data = b"the 3th line of a small text\n"
    tokens, units = token_units(bpe, data)
    ids, starts = bpe.pieces(data)
    assert len(tokens) == len(data) + 2 and tokens[0] == BOS_ID and tokens[-1] == EOS_ID
    assert units[0] == bpe.bos_id and units[-1] == bpe.eos_id
    np.testing.assert_array_equal(units[starts + 1], ids)
    assert np.sum(unit_starts(units)) == len(ids) + 2


def test_packed_rows_say_which_patches_are_whole_teacher_tokens(bpe):
    """A row that starts inside a token (its first byte split off), whole tokens in the middle, and
    the last patch (holding the byte still to be predicted) never whole."""
    docs = [token_units(bpe, t.encode()) for t in TEXTS[:3]]
    tokens = np.concatenate([d[0] for d in docs])
    units = np.concatenate([d[1] for d in docs])
    offset = int(np.flatnonzero(units >= 0)[5]) + 1  # one byte into the 6th token
    row, n = pack_row(tokens[offset:], unit_starts(units[offset:]), 64, 40, units[offset:])
    lengths = row["patch_lengths"]
    starts = np.concatenate([[0], np.cumsum(lengths)])[: int(np.sum(lengths > 0))]
    for j, start in enumerate(starts):
        end = starts[j + 1] if j + 1 < len(starts) else None
        stream_unit = units[offset + start]
        whole = end is not None and stream_unit >= 0 and units[offset + end] != -1
        assert row["token_mask"][j] == whole, j
        assert row["patch_tokens"][j] == (stream_unit if stream_unit >= 0 else -1), j
    assert not row["token_mask"][0] and not row["token_mask"][1]  # the split token's two pieces
    assert row["token_mask"][2 : len(starts) - 1].all()
    assert not row["token_mask"][len(starts) :].any() and (row["patch_tokens"][len(starts) :] == -1).all()


def test_binary_kl_and_patch_log_probs():
    p, q = np.log(np.array([0.3, 0.9, 0.5])), np.log(np.array([0.6, 0.2, 0.5]))
    want = np.exp(p) * (p - q) + (1 - np.exp(p)) * (np.log1p(-np.exp(p)) - np.log1p(-np.exp(q)))
    np.testing.assert_allclose(binary_kl(p, q), want, rtol=1e-5)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 10, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 10))
    lengths = np.array([[1, 3, 4, 3, 0], [1, 1, 5, 2, 2]])
    mask = np.ones((2, 10), bool)
    got = np.asarray(patch_logprobs(logits, dict(tokens=targets, targets=targets, mask=mask, patch_lengths=lengths)))
    logp = jax.nn.log_softmax(logits, axis=-1)
    for b in range(2):
        owner = np.repeat(np.arange(5), lengths[b])[1:]  # the patch of byte i + 1
        want = np.zeros(5)
        for i in range(10):
            want[owner[i]] += logp[b, i, targets[b, i]]
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)


def test_init_from_fills_named_subtrees_from_their_sources(tmp_path):
    """A token LM's blocks and final norm into a BLT's latent (same shapes), the rest left as
    initialised; a subtree that matches nothing, or a shape that differs, is refused naming it."""
    import dataclasses

    from blt_jax.api import TokenLM
    from blt_jax.config import BLTConfig, HashConfig, StackConfig, TokenLMConfig
    from blt_jax.loading.runs import load_initial_params
    from blt_jax.params import init_params

    stack = StackConfig(dim=32, n_layers=2, n_heads=4, ffn_hidden=64, n_kv_heads=2, head_dim=8)
    token = TokenLMConfig(stack=stack, vocab_size=300, tie_embeddings=True, eos_id=None)
    source = TokenLM(token, init_params(token, jax.random.key(1)))
    source.save(str(tmp_path / "teacher"))
    local = StackConfig(dim=16, n_layers=1, n_heads=2, ffn_hidden=32, window=16)
    blt = BLTConfig(encoder=local, latent=stack, decoder=local, latent_norm=True, hash=HashConfig((3, 4), 1021))
    fresh = init_params(blt, jax.random.key(2))
    teacher = str(tmp_path / "teacher")
    params = load_initial_params(blt, f"global_transformer={teacher}", lambda: fresh)
    latent = params["global_transformer"]
    np.testing.assert_array_equal(latent["layers_1"]["attention"]["wk"], source.params["layers_1"]["attention"]["wk"])
    np.testing.assert_array_equal(latent["norm"]["scale"], source.params["norm"]["scale"])
    np.testing.assert_array_equal(
        params["local_encoder"]["tok_embeddings"]["embedding"], fresh["local_encoder"]["tok_embeddings"]["embedding"]
    )
    with pytest.raises(ConfigError, match="no parameter of local_encoder/hash_embeddings"):
        load_initial_params(blt, f"local_encoder/hash_embeddings={teacher}", lambda: fresh)
    with pytest.raises(ConfigError, match="local_decoder/layers_0/attention/wk has shape"):
        load_initial_params(blt, f"local_decoder={teacher}", lambda: fresh)
    wider = dataclasses.replace(blt, latent=dataclasses.replace(stack, ffn_hidden=96))
    with pytest.raises(ConfigError, match="global_transformer/layers_0/feed_forward/w1 has shape"):
        load_initial_params(wider, f"global_transformer={teacher}", lambda: init_params(wider, jax.random.key(0)))


def test_frozen_subtrees_stay_and_multiplied_ones_move_at_their_rate():
    """One AdamW step from the same state: a frozen subtree does not move and holds no optimizer
    state; a subtree at 0.5x the learning rate moves exactly half as far (Adam's first step is
    lr x (g / |g| + weight decay x w))."""
    from test_train_step import tiny_experiment

    from blt_jax.data.pipeline import build_dataset
    from blt_jax.parallel import MeshConfig, make_mesh
    from blt_jax.train.programs import TrainPrograms

    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    plain = tiny_experiment(warmup_steps=0, eps=1e-20)
    grouped = tiny_experiment(
        warmup_steps=0, eps=1e-20, freeze="global_transformer", lr_multipliers="local_decoder=0.5"
    )
    batch = next(iter(build_dataset(plain.data)))
    moved = {}
    for name, exp in (("plain", plain), ("grouped", grouped)):
        programs = TrainPrograms(exp, mesh)
        state = programs.init()
        before = jax.device_get(state.params)
        if name == "grouped":
            frozen_state = [
                x
                for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
                if "global_transformer" in jax.tree_util.keystr(p)
            ]
            assert not frozen_state  # no Adam moments for the frozen latent
        state, _ = programs.step(state, programs.global_batch(batch))
        after = jax.device_get(state.params)
        moved[name] = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b), after, before)
    for leaf in jax.tree_util.tree_leaves(moved["grouped"]["global_transformer"]):
        assert not np.any(leaf)
    for got, full in zip(
        jax.tree_util.tree_leaves(moved["grouped"]["local_decoder"]),
        jax.tree_util.tree_leaves(moved["plain"]["local_decoder"]),
    ):
        np.testing.assert_allclose(got, 0.5 * full, rtol=1e-4, atol=1e-9)
    with pytest.raises(ConfigError, match="train.freeze.*names no parameter"):
        TrainPrograms(tiny_experiment(freeze="global_transfomer"), mesh)


def test_token_strings_are_the_bytes_each_id_stands_for(byte_level, bpe):
    """Every id with text decodes (through the library) to the bytes `token_strings` gives; specials
    have none; the 256 single bytes are all there."""
    for tokenizer in (byte_level, bpe):
        strings = tokenizer.token_strings()
        assert len(strings) == tokenizer.vocab_size
        assert {s[0] for s in strings if s is not None and len(s) == 1} == set(range(256))
        for index, s in enumerate(strings):
            if s is None:
                continue
            if tokenizer is bpe:
                assert tokenizer.decode([index]) == s, index
            elif s.isascii():  # the library decodes one token of a multi-byte character as U+FFFD
                assert byte_level._tokenizer.decode([index]) == s.decode(), index
    assert byte_level.token_strings()[0] is None and byte_level.token_strings()[1] is None  # BOS and EOS
    assert bpe.token_strings()[BOS_ID] is None and bpe.token_strings()[EOS_ID] is None


def _tiny_blt(hash_sizes=(1, 3, 4), vocab=1021):
    from blt_jax.config import BLTConfig, HashConfig, StackConfig

    local = StackConfig(dim=16, n_layers=1, n_heads=2, ffn_hidden=32, window=16)
    latent = StackConfig(dim=32, n_layers=1, n_heads=4, ffn_hidden=64)
    return BLTConfig(encoder=local, latent=latent, decoder=local, hash=HashConfig(hash_sizes, vocab))


def test_encoder_tables_hold_the_teachers_tokens_where_a_blt_looks_them_up(bpe):
    """Each token whose length is a group size sits (projected) in the bucket the BLT's own hash
    gives its bytes inside a row, single-byte tokens in the byte table; colliding tokens share their
    mean; the rest of every table is the fresh initialisation; the projected rows keep the fresh
    rows' size."""
    from blt_jax.byteify.embeddings import encoder_tables, fresh_tables, projected_tokens
    from blt_jax.nn.hash_embed import all_hash_ids

    config = _tiny_blt()
    strings = bpe.token_strings()
    embedding = np.random.default_rng(0).normal(size=(bpe.vocab_size + 3, 40)).astype(np.float32)  # padded rows
    tables, coverage = encoder_tables(config, embedding, strings)
    fresh = fresh_tables(config)
    rms = float(np.sqrt(np.mean(fresh["tok_embeddings"][4:] ** 2)))
    vectors = projected_tokens(embedding, strings, 16, rms)
    assert np.sqrt(np.mean(vectors[[s is not None for s in strings] + [False] * 3] ** 2)) == pytest.approx(rms)
    byte_table, hashed = tables["tok_embeddings/embedding"], tables["hash_embeddings/embedding"]
    for index, s in enumerate(strings):
        if s is not None and len(s) == 1:
            np.testing.assert_allclose(byte_table[s[0] + 4], vectors[index], rtol=1e-6)
    assert coverage.byte_rows == 256 and np.array_equal(byte_table[:4], fresh["tok_embeddings"][:4])
    lengths = [len(s) if s else 0 for s in strings]
    assert coverage.tokens == tuple(lengths.count(n) for n in (1, 3, 4)) and coverage.tokens[1] > 20
    touched = np.zeros(hashed.shape[:2], bool)
    for table, n in enumerate((1, 3, 4)):
        ids = [i for i, length in enumerate(lengths) if length == n]
        # The bucket of each token's bytes at their last byte, inside a row after other bytes.
        buckets = []
        for i in ids:
            row = np.frombuffer(b"xyz " + strings[i], np.uint8).astype(np.int32)[None] + 4
            buckets.append(int(np.asarray(all_hash_ids(row, config.hash)[table])[0, -1]))
        for bucket in set(buckets):
            mean = np.mean([vectors[i] for i, b in zip(ids, buckets) if b == bucket], axis=0)
            np.testing.assert_allclose(hashed[table, bucket], mean, rtol=1e-5, atol=1e-7)
            touched[table, bucket] = True
        assert coverage.buckets[table] == len(set(buckets))
    np.testing.assert_array_equal(hashed[~touched], fresh["hash_embeddings"][~touched])


def test_init_from_reads_a_file_of_named_tensors(tmp_path, bpe):
    """`train.init_from` with a `.safetensors` file: the tables it names fill that subtree, the rest
    keep their initialisation; a missing file is refused naming it."""
    from blt_jax.byteify.embeddings import encoder_tables
    from blt_jax.convert.safetensors_io import write_safetensors
    from blt_jax.errors import NotFound
    from blt_jax.loading.runs import load_initial_params
    from blt_jax.params import init_params

    config = _tiny_blt()
    tables, _ = encoder_tables(config, np.ones((bpe.vocab_size, 16), np.float32) * np.arange(16), bpe.token_strings())
    write_safetensors(str(tmp_path / "tables.safetensors"), tables)
    fresh = init_params(config, jax.random.key(3))
    params = load_initial_params(config, f"local_encoder={tmp_path / 'tables.safetensors'}", lambda: fresh)
    encoder = params["local_encoder"]
    np.testing.assert_array_equal(encoder["hash_embeddings"]["embedding"], tables["hash_embeddings/embedding"])
    np.testing.assert_array_equal(encoder["tok_embeddings"]["embedding"], tables["tok_embeddings/embedding"])
    np.testing.assert_array_equal(
        encoder["layers_0"]["attention"]["wq"], fresh["local_encoder"]["layers_0"]["attention"]["wq"]
    )
    with pytest.raises(NotFound, match="nothing.safetensors: no such file"):
        load_initial_params(config, f"local_encoder={tmp_path / 'nothing.safetensors'}", lambda: fresh)


def test_byteify_refuses_bad_input_in_one_line(tmp_path):
    """From a fresh directory: a teacher without a tokenizer, an architecture we do not read, and
    options whose widths cannot fit the teacher; nothing is written."""
    import shutil

    from transformers import LlamaForCausalLM

    teachers.save_random(LlamaForCausalLM, teachers.llama_config(), tmp_path / "no_tokenizer")
    shutil.copytree(tmp_path / "no_tokenizer", tmp_path / "gpt2")
    teachers.edit_config(tmp_path / "gpt2", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    shutil.copytree(tmp_path / "no_tokenizer", tmp_path / "teacher")
    teachers.byte_level_tokenizer(TEXTS, 300, str(tmp_path / "teacher" / "tokenizer.json"))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("".join(TEXTS))
    cases = [
        (["--teacher", "no_tokenizer"], "no tokenizer beside the model"),
        (["--teacher", "gpt2"], "model_type 'gpt2' (GPT2LMHeadModel) is an architecture blt_jax does not read"),
        (["--teacher", "teacher", "--config.local.dim=64"], "local.dim: 64 is wider than the teacher's 48"),
        (["--teacher", "teacher", "--config.stage2.patcher=bpe"], "stage2.patcher: must be one of entropy, teacher"),
        (
            ["--teacher", "teacher", "--config.stage1.embeddings=zeros"],
            "stage1.embeddings: must be one of teacher, random",
        ),
        (["--teacher", "teacher", "--heldout", "nowhere"], "nowhere"),
    ]
    commands = [["byteify", *extra, "--corpus", "corpus", "--workdir", "out", "--scale", "tiny"] for extra, _ in cases]
    for (extra, needle), done in zip(cases, blt_jax_many(commands, cwd=tmp_path), strict=True):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (extra, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("blt-jax byteify: error:") and needle in lines[0], (extra, lines)
    assert not os.path.exists(tmp_path / "out")


def test_sample_corpus_writes_a_seeded_sample_within_its_budget(tmp_path):
    """`byteify --heldout`'s sampler: whole documents in a seeded order, the last one cut at the
    budget, as plain files; the same seed gives the same sample."""
    from blt_jax.data.split import sample_corpus

    (tmp_path / "corpus").mkdir()
    for i in range(20):
        (tmp_path / "corpus" / f"{i:02d}.txt").write_text("".join(f"line {i} {j}\n" for j in range(200)))
    first = sample_corpus(str(tmp_path / "corpus"), str(tmp_path / "a"), 5_000)
    again = sample_corpus(str(tmp_path / "corpus"), str(tmp_path / "b"), 5_000)
    sample_corpus(str(tmp_path / "corpus"), str(tmp_path / "c"), 5_000, seed=1)
    read = lambda d: [p.read_bytes() for p in sorted((tmp_path / d).iterdir())]
    assert read("a") == read("b") and read("a") != read("c")
    written = sum(map(len, read("a")))
    assert first["bytes"] == written and 5_000 <= written < 5_000 + 2_048 and first == again
    assert 1 < first["documents"] < 20 and first["pieces"] == len(read("a"))
