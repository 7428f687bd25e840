"""Streaming entropies equal one forward pass over each whole document."""

import jax
import numpy as np
import pytest

from blt_jax.config import EntropyLMConfig, StackConfig
from blt_jax.nn.entropy_lm import EntropyLM, entropies_from_logits
from blt_jax.params import init_params
from blt_jax.patching.stream import EntropyStreamer, assign_lanes, layout
from blt_jax.tokenizer import encode

WINDOW = 16
CONFIG = EntropyLMConfig(StackConfig(32, 3, 4, 96, rope_theta=10000.0, window=WINDOW))


@pytest.fixture(scope="module")
def params():
    p = init_params(CONFIG, jax.random.key(0))
    return jax.tree_util.tree_map(lambda x: x * 3.0 if x.ndim >= 2 else x, p)  # peaked outputs


@pytest.fixture(scope="module")
def single_pass(params):
    fn = jax.jit(lambda p, t: entropies_from_logits(EntropyLM(CONFIG).apply({"params": p}, t)))
    return lambda doc: np.asarray(fn(params, doc[None]))[0]


def documents():
    rng = np.random.default_rng(0)
    lengths = [300, 5, 1, 77, 0, 40, 129]
    return [encode(bytes(rng.integers(32, 127, size=n).astype(np.uint8))) for n in lengths]


def test_long_documents_equal_one_forward(params, single_pass):
    docs = documents()
    streamer = EntropyStreamer(CONFIG, params, chunk=24, lanes=8)
    seen = []
    got = streamer(docs, on_progress=seen.append)
    assert sum(seen) == sum(len(d) for d in docs)
    for doc, ent in zip(docs, got):
        assert ent.shape == doc.shape and ent.dtype == np.float32
        np.testing.assert_allclose(ent, single_pass(doc), atol=2e-5, rtol=0)
    assert np.std(np.concatenate(got)) > 0.3  # peaked, varied entropies: a real check


def test_chunk_size_and_lane_count_do_not_matter(params):
    docs = documents()
    a = EntropyStreamer(CONFIG, params, chunk=7, lanes=8)(docs)
    b = EntropyStreamer(CONFIG, params, chunk=64, lanes=16, devices=jax.devices()[:8])(docs)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=2e-5, rtol=0)


def test_short_overlap_is_not_enough(params, single_pass):
    """Windows carrying only W bytes of left context change the entropies of a multi-layer model:
    its receptive field is n_layers * (W - 1) bytes."""
    doc = documents()[0]
    full = single_pass(doc)
    start = 100
    context = doc[start - WINDOW : start + 20]  # W bytes of left context, then 20 new positions
    partial = single_pass(context)[WINDOW:]
    assert np.abs(partial - full[start : start + 20]).max() > 1e-3
    deep = CONFIG.stack.n_layers * (WINDOW - 1)
    enough = single_pass(doc[start - deep : start + 20])[deep:]
    np.testing.assert_allclose(enough, full[start : start + 20], atol=2e-5, rtol=0)


def test_layout_and_balance():
    docs = [np.arange(n, dtype=np.int32) for n in (10, 3, 3, 3, 1)]
    plan = assign_lanes([len(d) for d in docs], 2)
    assert sorted(sum(plan, [])) == list(range(5))
    tokens, positions, doc_ids, spans = layout(docs, 2, 4)
    assert tokens.shape == (2, 12)
    for i, (lane, begin, end) in enumerate(spans):
        assert (tokens[lane, begin:end] == docs[i]).all() and (
            positions[lane, begin:end] == np.arange(len(docs[i]))
        ).all()
        assert (doc_ids[lane, begin:end] == i).all()


def test_needs_a_window():
    no_window = EntropyLMConfig(StackConfig(32, 1, 4, 96))
    with pytest.raises(ValueError, match="sliding window"):
        EntropyStreamer(no_window, None)
