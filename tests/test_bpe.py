"""The BPE arm: a byte-exact BPE tokenizer, token rows with the bytes of their targets, a token
transformer (model kind token_lm) whose bits per byte count the same bytes a byte model does."""

import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from user import blt_jax, user_env

from blt_jax.config import ConfigError
from blt_jax.data import bpe
from blt_jax.data.bpe import BpeTokenizer, train_bpe
from blt_jax.data.pipeline import DataConfig, build_dataset
from blt_jax.errors import InputError, MissingDependency, NotFound
from blt_jax.experiment.config import experiment_from_dict, experiment_to_dict
from blt_jax.metrics.flops import entropy_lm_forward_flops
from blt_jax.models import model_kind
from blt_jax.parallel import MeshConfig, make_mesh
from blt_jax.train.programs import TrainPrograms

WORDS = ["the", "value", "return", "total", "quick", "brown", "fox", "data", "model", "bytes"]
VOCAB = 400
STACK = dict(dim=32, n_layers=1, n_heads=4, ffn_hidden=64, rope_theta=10000.0, window=None, norm_eps=1e-5)
TRICKY = [
    b"",
    b"a",
    b"\xff\xfe",
    b"\x00\x01\x02 \x7f",
    "héllo wörld, 日本語 🙂\n".encode(),
    b"\xe6\x97",
    bytes(range(256)) * 2,
    b"<s></s><boe>\x01\x02",
    b"  \t\r\n\n  return the_total\r\n",
    b"caf\xe9 \xc3(",
]


def document(i: int) -> bytes:
    """A small Python/English document (its words repeat, so BPE learns them)."""
    lines = []
    for j in range(30):
        a, b = WORDS[(i + j) % 10], WORDS[(i * 3 + j) % 10]
        lines.append(f"def {a}_{j}({b}):\n    return {b} * {j} + {a}  # the {a} of the {b}\n")
    return "".join(lines).encode()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory with corpus/ (12 documents, one per file) and tok.json trained on them."""
    root = tmp_path_factory.mktemp("bpe")
    (root / "corpus").mkdir()
    for i in range(12):
        (root / "corpus" / f"{i:02d}.txt").write_bytes(document(i))
    train_bpe([document(i) for i in range(12)], VOCAB, str(root / "tok.json"))
    return root


@pytest.fixture(scope="module")
def tokenizer(work):
    return BpeTokenizer.load(str(work / "tok.json"))


# --- the tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", TRICKY)
def test_every_byte_string_round_trips_and_its_tokens_count_its_bytes(tokenizer, data):
    ids = tokenizer.encode(data, add_bos=False, add_eos=False)
    assert ids.dtype == np.int32 and (ids.size == 0 or ids.min() >= bpe.OFFSET)
    assert tokenizer.decode(ids) == data
    assert int(tokenizer.token_bytes[ids].sum()) == len(data)
    framed = tokenizer.encode(data)
    assert framed[0] == 1 and framed[-1] == 2 and np.array_equal(framed[1:-1], ids)
    assert tokenizer.decode(framed) == data  # specials drop out
    assert int(tokenizer.token_bytes[framed].sum()) == len(data) + 2  # BOS and EOS count one byte each


def test_token_table_layout(tokenizer):
    assert tokenizer.vocab_size <= VOCAB and tokenizer.token_bytes.shape == (tokenizer.vocab_size,)
    assert tokenizer.token_bytes.dtype == np.int32
    assert list(tokenizer.token_bytes[:4]) == [0, 1, 1, 0]  # PAD, BOS, EOS, unused
    assert tokenizer.token_bytes[4:].min() >= 1
    # Each id decodes to exactly as many bytes as token_bytes says.
    lengths = [len(tokenizer.decode([i])) for i in range(4, tokenizer.vocab_size)]
    assert lengths == list(tokenizer.token_bytes[4:])


def test_training_is_deterministic(work, tmp_path):
    again = train_bpe([document(i) for i in range(12)], VOCAB, str(tmp_path / "again.json"))
    assert (tmp_path / "again.json").read_bytes() == (work / "tok.json").read_bytes()
    assert again.vocab_size > 300


def test_common_words_become_single_tokens(tokenizer):
    text = b"".join(document(i) for i in range(12))
    ids = tokenizer.encode(text, add_bos=False, add_eos=False)
    assert len(text) / len(ids) > 1.5
    for word in (b"def", b" return", b" value", b" the"):
        assert len(tokenizer.encode(word, add_bos=False, add_eos=False)) == 1, word


def test_relative_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    train_bpe([document(0)], 300, "sub/dir/tok.json")
    train_bpe([document(0)], 300, "~/tok.json")
    assert (tmp_path / "home" / "tok.json").is_file()
    assert BpeTokenizer.load("sub/dir/tok.json").path == str(tmp_path / "sub" / "dir" / "tok.json")
    assert BpeTokenizer.load("~/tok.json").decode(BpeTokenizer.load("~/tok.json").encode(b"def f(x)")) == b"def f(x)"


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def test_one_line_errors(tmp_path, monkeypatch):
    for size in (260, 100, 1 << 21, 300.5):
        with pytest.raises(InputError) as e:
            train_bpe([b"abc"], size, str(tmp_path / "x.json"))
        assert "vocab_size" in _one_line(e.value)
    with pytest.raises(NotFound) as e:
        BpeTokenizer.load(str(tmp_path / "missing.json"))
    assert "tokenizer" in _one_line(e.value)
    (tmp_path / "garbage.json").write_text("{ not json")
    with pytest.raises(InputError) as e:
        BpeTokenizer.load(str(tmp_path / "garbage.json"))
    assert "not JSON" in _one_line(e.value)
    # A tokenizer that cannot represent every byte (one byte value has no token).
    train_bpe([b"abc abc"], 300, str(tmp_path / "ok.json"))
    spec = json.loads((tmp_path / "ok.json").read_text())
    vocab = spec["model"]["vocab"]
    del vocab["\x00"]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(sorted(vocab, key=vocab.get))}  # ids 0..V-1 again
    (tmp_path / "holes.json").write_text(json.dumps(spec))
    with pytest.raises(InputError) as e:
        BpeTokenizer.load(str(tmp_path / "holes.json"))
    assert "0x00" in _one_line(e.value)
    spec = json.loads((tmp_path / "ok.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (tmp_path / "normalized.json").write_text(json.dumps(spec))
    with pytest.raises(InputError) as e:
        BpeTokenizer.load(str(tmp_path / "normalized.json"))
    assert "normalizer" in _one_line(e.value)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(MissingDependency) as e:
        train_bpe([b"abc"], 300, str(tmp_path / "y.json"))
    assert "pip install tokenizers" in _one_line(e.value)


# --- token rows --------------------------------------------------------------------------------


def _rows(config: DataConfig) -> list[dict]:
    return list(build_dataset(config, rows=[0]))


def test_target_bytes_count_the_bytes_a_byte_model_counts(work, tokenizer):
    base = DataConfig(
        source=str(work / "corpus"), batch_size=1, row_bytes=64, row_patches=0, shuffle=False, num_epochs=1
    )
    tokens = _rows(DataConfig(**{**base.__dict__, "tokenizer": str(work / "tok.json")}))
    byte_rows = _rows(base)
    assert all("target_bytes" not in row for row in byte_rows)
    stacked = {k: np.concatenate([row[k] for row in tokens]) for k in tokens[0]}
    assert stacked["target_bytes"].dtype == np.float32 and stacked["target_bytes"].shape == stacked["tokens"].shape
    mask = stacked["mask"]
    np.testing.assert_array_equal(stacked["target_bytes"][~mask], 0)
    np.testing.assert_array_equal(stacked["target_bytes"][mask], tokenizer.token_bytes[stacked["targets"][mask]])
    # Every document's bytes and its BOS/EOS (the first BOS is never a target), as for byte rows.
    docs = [document(i) for i in range(12)]
    expected = sum(len(d) + 2 for d in docs) - 1
    assert float((stacked["target_bytes"] * mask).sum()) == expected
    assert int(sum(row["mask"].sum() for row in byte_rows)) == expected
    # The rows hold the token stream: the targets of the real positions decode to the documents.
    assert tokenizer.decode(stacked["targets"][mask]) == b"".join(docs)
    assert (stacked["tokens"][mask] >= 1).all() and stacked["tokens"][mask].max() < tokenizer.vocab_size


def test_data_config_validation():
    with pytest.raises(ConfigError, match="row_patches"):
        DataConfig(row_patches=16, tokenizer="tok.json")
    with pytest.raises(ConfigError, match="tokenizer"):
        DataConfig(row_patches=0, tokenizer="")


# --- the token transformer ------------------------------------------------------------------


def experiment_dict(work, **train) -> dict:
    data = dict(
        source=str(work / "corpus"),
        batch_size=2,
        shards=1,
        row_bytes=64,
        row_patches=0,
        tokenizer=str(work / "tok.json"),
        shuffle=False,
    )
    return dict(
        model=dict(kind="token_lm", stack=STACK, vocab_size=VOCAB),
        data=data,
        eval=dict(data, num_epochs=1),
        mesh=dict(data=1, fsdp=-1, tensor=1),
        train=dict(dict(steps=4, warmup_steps=0, learning_rate=3e-3), **train),
    )


def test_config_round_trip_and_kind_rules(work):
    exp = experiment_from_dict(experiment_dict(work))
    assert experiment_from_dict(experiment_to_dict(exp)) == exp
    assert exp.data.tokenizer == str(work / "tok.json") and exp.data.row_patches == 0
    kind = model_kind(exp.model)
    assert kind.name == "token_lm" and kind.token_rows
    shapes = kind.batch_shapes(2, 64, 0)
    assert shapes["target_bytes"].shape == (2, 64) and shapes["target_bytes"].dtype == np.float32
    per_token = entropy_lm_forward_flops(exp.model, 64) / 64
    assert kind.training_flops_per_byte(64, 3.0) == pytest.approx(3 * per_token / 3.0)

    raw = experiment_dict(work)
    raw["data"].pop("tokenizer")
    with pytest.raises(ConfigError, match="data.tokenizer"):
        experiment_from_dict(raw)
    raw = experiment_dict(work)
    raw["model"]["vocab_size"] = (
        1  # (a pretrained token LM may have any vocabulary; the BPE's is checked on loading it)
    )
    with pytest.raises(ConfigError, match="model.vocab_size"):
        experiment_from_dict(raw)
    raw = experiment_dict(work)
    raw["model"] = dict(kind="entropy_lm", stack=STACK, vocab_size=260)
    with pytest.raises(ConfigError, match="data.tokenizer.*token_lm"):
        experiment_from_dict(raw)


def _numpy_nats(logits: np.ndarray, batch: dict) -> tuple[float, float]:
    logits = logits.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
    return float((nll * batch["mask"]).sum()), float(batch["mask"].sum())


def test_bits_per_byte_of_token_batches(work):
    exp = experiment_from_dict(experiment_dict(work))
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    programs = TrainPrograms(exp, mesh)
    batch = next(iter(build_dataset(exp.data, rows=[0, 1])))
    params = jax.device_get(programs.init().params)
    logits = np.asarray(model_kind(exp.model).apply_fn()(params, batch))
    nats, tokens = _numpy_nats(logits, batch)
    byte_sum = float((batch["target_bytes"] * batch["mask"]).sum())
    assert byte_sum > 1.5 * tokens

    _, metrics = programs.step(programs.init(), programs.global_batch(batch))
    assert float(metrics["bpb"]) == pytest.approx(nats / (math.log(2) * byte_sum), rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(nats / tokens, rel=1e-5)
    assert float(metrics["bytes"]) == byte_sum and float(metrics["patches"]) == tokens

    # Gradient accumulation: the same numbers.
    accum = TrainPrograms(experiment_from_dict(experiment_dict(work, grad_accum=2)), mesh)
    _, split = accum.step(accum.init(), accum.global_batch(batch))
    assert float(split["bpb"]) == pytest.approx(float(metrics["bpb"]), rel=1e-5)
    assert float(split["bytes"]) == byte_sum

    result = programs.evaluate(params, [batch])
    assert result["eval_bpb"] == pytest.approx(nats / (math.log(2) * byte_sum), rel=1e-5)
    assert result["eval_loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert result["eval_bytes"] == byte_sum
    assert result["eval_mean_patch_len"] == pytest.approx(byte_sum / tokens)

    # One byte per target: bits per byte is the byte formula, loss / ln 2.
    ones = dict(batch, target_bytes=np.ones_like(batch["target_bytes"]))
    _, metrics = programs.step(programs.init(), programs.global_batch(ones))
    assert float(metrics["bpb"]) == pytest.approx(float(metrics["loss"]) / math.log(2), rel=1e-6)
    assert float(metrics["bytes"]) == tokens


def test_a_tokenizer_larger_than_the_model_fails_in_one_line(work, tmp_path):
    raw = experiment_dict(work)
    raw["model"]["vocab_size"] = 290  # the tokenizer has more ids
    from blt_jax.train.loop import train_and_evaluate

    with pytest.raises(InputError, match="model.vocab_size to at least") as e:
        train_and_evaluate(experiment_from_dict(raw), str(tmp_path / "run"), progress=False)
    _one_line(e.value)


# --- as a user runs it --------------------------------------------------------------------------

EXPERIMENT = """
import ml_collections

def get_config(arg=None):
    stack = dict(dim=32, n_layers=1, n_heads=4, ffn_hidden=64, rope_theta=10000.0, window=None, norm_eps=1e-5)
    data = dict(source="corpus", batch_size=4, shards=0, row_bytes=64, row_patches=0, tokenizer="tok.json",
                shuffle=True, seed=0)
    return ml_collections.ConfigDict(dict(
        model=dict(kind="token_lm", stack=stack, vocab_size=400),
        data=data,
        eval=dict(data, shuffle=False, num_epochs=1),
        train=dict(steps=6, warmup_steps=1, learning_rate=3e-3, log_every=2, eval_every=3, eval_batches=2,
                   checkpoint_every=3),
        mesh=dict(data=1, fsdp=-1, tensor=1),
    ))
"""


def test_blt_jax_train_a_token_transformer_from_relative_paths(tmp_path):
    cwd = tmp_path / "work"
    (cwd / "corpus").mkdir(parents=True)
    for i in range(12):
        (cwd / "corpus" / f"{i:02d}.txt").write_bytes(document(i))
    (cwd / "bpe.py").write_text(EXPERIMENT)
    code = (
        "from blt_jax.data.bpe import train_bpe; import pathlib; "
        "train_bpe([p.read_bytes() for p in sorted(pathlib.Path('corpus').iterdir())], 400, 'tok.json')"
    )
    made = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, made.stderr[-3000:]

    def train(*extra):
        return blt_jax("train", "--config", "bpe.py", "--workdir", "runs/bpe", *extra, cwd=cwd, timeout=900)

    result = train()
    assert result.returncode == 0, result.stderr[-3000:]
    run = cwd / "runs" / "bpe"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "bpb" in r]
    evals = [r for r in rows if "eval_bpb" in r]
    assert [r["step"] for r in steps] == [2, 4, 6] and [r["step"] for r in evals] == [3, 6]
    for r in steps:
        assert math.isfinite(r["bpb"]) and r["bpb"] > 0 and r["mean_patch_len"] > 1
    for r in evals:
        assert math.isfinite(r["eval_bpb"]) and 0 < r["eval_bpb"] < r["eval_loss"] / math.log(2)
        assert r["eval_mean_patch_len"] > 1  # bytes per token
    assert json.loads((run / "config.json").read_text())["data"]["tokenizer"] == str(cwd / "tok.json")
    assert (run / "tokenizer.json").read_bytes() == (cwd / "tok.json").read_bytes()  # the run keeps a copy

    # Resumes from its checkpoint; evaluates from the run alone.
    result = train("--config.train.steps=8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 6" in result.stderr
    result = blt_jax("eval", "--checkpoint", "runs/bpe", cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per byte" in result.stdout

    # A token LM of ours is a token LM like a Llama: `blt-jax convert` writes it in our format with
    # its tokenizer, and both load with the same logits and the same ids for a text.
    result = blt_jax("convert", "runs/bpe", "converted", cwd=cwd, timeout=600)
    assert result.returncode == 0 and "a token LM" in result.stdout, result.stderr[-3000:]
    import blt_jax as bj

    run_model, converted = bj.from_pretrained(str(run)), bj.from_pretrained(str(cwd / "converted"))
    assert isinstance(converted, bj.api.TokenLM) and converted.config == run_model.config
    text = document(3)[:200]
    ids = converted.encode(text)
    np.testing.assert_array_equal(ids, run_model.encode(text))
    np.testing.assert_array_equal(np.asarray(converted.logits(ids[None])), np.asarray(run_model.logits(ids[None])))
    # `blt-jax export` writes the same (it raised a TypeError traceback for token LMs), and the
    # Hugging Face layout, written for BLTs only, is one line.
    result = blt_jax("export", "runs/bpe", "exported", cwd=cwd, timeout=600)
    assert result.returncode == 0 and "a token LM, 400 ids; tokenizer: included" in result.stdout, result.stderr[-3000:]
    assert (cwd / "exported" / "tokenizer.json").read_bytes() == (cwd / "tok.json").read_bytes()
    result = blt_jax("export", "runs/bpe", "exported_hf", "--format", "hf", cwd=cwd, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "blt-jax export: error: format 'hf': a token transformer is saved in our format only"
    ), result.stderr[-2000:]
