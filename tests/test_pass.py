"""The entropy pass: stored entropies, resumption after an interruption, bad input, mismatches."""

import os

import jax
import numpy as np
import pytest

from blt_jax.config import EntropyLMConfig, StackConfig
from blt_jax.data import entropy_pass as pass_module
from blt_jax.data.entropy_pass import PassMismatch, PassOptions, run_pass
from blt_jax.nn.entropy_lm import EntropyLM, entropies_from_logits
from blt_jax.params import init_params
from blt_jax.patching import store
from blt_jax.tokenizer import encode

CONFIG = EntropyLMConfig(StackConfig(32, 2, 4, 96, rope_theta=10000.0, window=16))
OPTIONS = PassOptions(docs_per_shard=2, chunk=32, lanes=8, progress=False)


@pytest.fixture(scope="module")
def params():
    p = init_params(CONFIG, jax.random.key(0))
    return jax.tree_util.tree_map(lambda x: x * 3.0 if x.ndim >= 2 else x, p)


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate([150, 3, 40, 0, 90]):
        (root / f"doc{i}.txt").write_bytes(bytes(rng.integers(32, 127, size=n).astype(np.uint8)))
    (root / "more.jsonl").write_text('{"text": "json document"}\n{broken\n{"text": "last one"}\n')
    return str(root)


def read_all(directory):
    return [(d, e.copy(), o) for d, e, o in store.iter_stored(directory)]


def test_pass_stores_exact_entropies(corpus, params, tmp_path):
    out = str(tmp_path / "out")
    manifest = run_pass(corpus, out, CONFIG, params, "test model", OPTIONS)
    counts = manifest["counts"]
    assert counts == {
        "documents": 6,
        "bytes": 150 + 3 + 40 + 90 + 13 + 8,
        "tokens": 304 + 12,
        "skipped_empty": 1,
        "skipped_bad": 1,
        "files": 6,
    }
    assert manifest["complete"] and len(manifest["shards"]) == 3 and manifest["window"] == 16
    records = read_all(out)
    assert [o.rsplit("/", 1)[-1] for _, _, o in records] == [
        "doc0.txt",
        "doc1.txt",
        "doc2.txt",
        "doc4.txt",
        "more.jsonl:1",
        "more.jsonl:3",
    ]
    single = jax.jit(lambda p, t: entropies_from_logits(EntropyLM(CONFIG).apply({"params": p}, t)))
    total = 0.0
    for data, entropies, _ in records:
        assert entropies.dtype == np.float16 and len(entropies) == len(data) + 2
        want = np.asarray(single(params, encode(data)[None]))[0]
        np.testing.assert_allclose(entropies.astype(np.float32), want, rtol=1e-3, atol=1e-3)  # float16 storage
        total += float(entropies.astype(np.float64).sum())
    assert manifest["mean_entropy"] == pytest.approx(total / counts["tokens"], rel=1e-3)


def test_interrupted_pass_resumes_without_rewriting(corpus, params, tmp_path, monkeypatch):
    reference = str(tmp_path / "reference")
    run_pass(corpus, reference, CONFIG, params, "test model", OPTIONS)

    out = str(tmp_path / "out")
    real_call = pass_module.EntropyStreamer.__call__
    calls = []

    def crash_on_second_shard(self, docs, on_progress=None):
        calls.append(len(docs))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the machine were preempted mid-pass
        return real_call(self, docs, on_progress)

    monkeypatch.setattr(pass_module.EntropyStreamer, "__call__", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_pass(corpus, out, CONFIG, params, "test model", OPTIONS)
    partial = store.load_manifest(out)
    assert [s["index"] for s in partial["shards"]] == [0] and not partial["complete"]
    first = os.path.join(out, store.shard_name(0))
    before = os.stat(first)

    calls.clear()
    monkeypatch.setattr(pass_module.EntropyStreamer, "__call__", real_call)
    manifest = run_pass(corpus, out, CONFIG, params, "test model", OPTIONS)
    after = os.stat(first)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # never rewritten
    assert manifest["complete"] and len(manifest["shards"]) == 3
    for (d1, e1, o1), (d2, e2, o2) in zip(read_all(out), read_all(reference), strict=True):
        assert (d1, o1) == (d2, o2) and np.array_equal(e1, e2)
    # A complete pass run again does no work at all.
    monkeypatch.setattr(pass_module.EntropyStreamer, "__init__", lambda *a, **k: pytest.fail("recomputed"))
    run_pass(corpus, out, CONFIG, params, "test model", OPTIONS)


def test_other_model_or_changed_corpus_is_refused(corpus, params, tmp_path):
    out = str(tmp_path / "out")
    run_pass(corpus, out, CONFIG, params, "test model", OPTIONS)
    with pytest.raises(PassMismatch, match="different entropy_model"):
        run_pass(corpus, out, CONFIG, params, "another model", OPTIONS)
    os.remove(os.path.join(corpus, "doc1.txt"))
    with pytest.raises(PassMismatch, match="the corpus changed"):
        run_pass(corpus, out, CONFIG, params, "test model", OPTIONS)


def test_strict_pass_stops_with_file_and_line(corpus, params, tmp_path):
    from blt_jax.data.sources import SourceError

    strict = PassOptions(docs_per_shard=2, chunk=32, lanes=8, progress=False, strict=True)
    with pytest.raises(SourceError, match=r"more\.jsonl:2: invalid JSON"):
        run_pass(corpus, str(tmp_path / "out"), CONFIG, params, "test model", strict)
