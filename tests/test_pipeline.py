"""The grain pipeline: exact stream reconstruction, patch invariants, sharding, resume, bad input."""

import dataclasses
import json

import grain
import jax
import numpy as np
import pytest

from blt_jax.config import ConfigError, PatchingConfig
from blt_jax.data.packing import pack_row
from blt_jax.data.pipeline import DataConfig, build_dataset, prepare_document, to_global
from blt_jax.data.shards import process_share
from blt_jax.data.sources import SourceError, SourceStats, open_corpus
from blt_jax.errors import InputError
from blt_jax.tokenizer import encode

N, P = 64, 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "x", "yy", "zzz", "\u00e9t\u00e9", "\u65e5\u672c"]
    for i in range(12):
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 60))))
        (root / f"doc{i:02d}.txt").write_text(text)
    (root / "binary.bin").write_bytes(bytes([0, 1, 2, 255, 254, 128, 10, 13]))
    (root / "lines.jsonl").write_text('{"text": "first line"}\n{bad json\n{"text": ""}\n{"text": "last line"}\n')
    return str(root)


def documents_in_order(spec, seed, shuffle=True, index=0, count=1):
    """The documents the pipeline should see, computed without it."""
    ds = grain.MapDataset.source(open_corpus(spec))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return [d for d in ds[index::count].to_iter_dataset()]


def all_rows(config, **kwargs):
    rows = []
    for batch in build_dataset(config, **kwargs):
        for b in range(batch["tokens"].shape[0]):
            rows.append({k: v[b] for k, v in batch.items()})
    return rows


def check_row(row, patches=P):
    lengths = row["patch_lengths"]
    assert row["tokens"].shape == (N,) and row["targets"].shape == (N,) and lengths.shape == (patches,)
    assert lengths.sum() == N + 1 and lengths[0] == 1 and (lengths >= 0).all()
    nz = np.flatnonzero(lengths)
    assert (lengths[: nz[-1] + 1] > 0).all()  # trailing zeros only
    n = int(row["mask"].sum())
    assert row["mask"][:n].all() and not row["mask"][n:].any()
    assert (row["tokens"][n:] == 0).all() and (row["targets"][n:] == 0).all()
    assert (row["targets"][: n - 1] == row["tokens"][1:n]).all()
    return n


def test_rows_reproduce_the_shuffled_stream_exactly(corpus):
    config = DataConfig(
        source=corpus,
        batch_size=1,
        row_bytes=N,
        row_patches=P,
        seed=3,
        num_epochs=1,
        patching=PatchingConfig(mode="space"),
    )
    rows = all_rows(config)
    docs = documents_in_order(corpus, seed=3)
    stream = np.concatenate([encode(d.data) for d in docs])
    inputs = [r["tokens"][: check_row(r)] for r in rows]
    rebuilt = np.concatenate(inputs + [rows[-1]["targets"][len(inputs[-1]) - 1 : len(inputs[-1])]])
    np.testing.assert_array_equal(rebuilt, stream)  # nothing lost, nothing repeated
    for a, b in zip(rows, rows[1:]):  # a row's last target is the next row's first input
        n = int(a["mask"].sum())
        assert a["targets"][n - 1] == b["tokens"][0]
    raw = bytes((stream[(stream >= 4)] - 4).astype(np.uint8))
    assert bytes([0, 1, 2, 255, 254, 128, 10, 13]) in raw  # binary passes through untouched


@pytest.mark.parametrize(
    "patching",
    [
        PatchingConfig(mode="space"),
        PatchingConfig(mode="static", static_size=3),
        PatchingConfig(mode="space", max_patch_length=4),
    ],
)
def test_patches_follow_the_document_rule_except_at_row_starts(corpus, patching):
    config = DataConfig(
        source=corpus, batch_size=1, row_bytes=N, row_patches=P, seed=1, num_epochs=1, patching=patching
    )
    rows = all_rows(config)
    docs = documents_in_order(corpus, seed=1)
    flags = np.concatenate([prepare_document(d, patching)["starts"] for d in docs])
    offset = 0
    for row in rows:
        n = check_row(row)
        starts = np.zeros(n + 1, bool)
        starts[np.cumsum(row["patch_lengths"])[:-1][np.cumsum(row["patch_lengths"])[:-1] <= n]] = True
        starts[0] = True
        expected = (
            flags[offset : offset + n + 1].copy() if offset + n + 1 <= len(flags) else np.append(flags[offset:], True)
        )
        expected[:2] = True  # every row starts with a one-byte patch
        np.testing.assert_array_equal(starts, expected[: n + 1])
        offset += n


def test_patch_budget_stops_rows_early(corpus):
    config = DataConfig(
        source=corpus, batch_size=1, row_bytes=N, row_patches=4, num_epochs=1, patching=PatchingConfig(mode="byte")
    )
    rows = all_rows(config)
    assert all(check_row(r, 4) == 3 for r in rows[:-1])  # 4 one-byte patches: 3 inputs + the next slot


def test_pack_row_directly():
    tokens = np.arange(10, 30, dtype=np.int32)
    starts = np.zeros(20, bool)
    starts[[0, 5, 12]] = True
    row, used = pack_row(tokens, starts, 8, 5)
    assert used == 8 and row["patch_lengths"].tolist() == [1, 4, 4, 0, 0]
    row, used = pack_row(tokens[5:], starts[5:], 8, 3)
    assert used == 8 and row["patch_lengths"].tolist() == [1, 6, 2]
    row, used = pack_row(tokens[5:], starts[5:], 8, 2)  # a third patch would start at 7: stop before it
    assert used == 6 and row["patch_lengths"].tolist() == [1, 8]  # 6 inputs + next slot + 2 padding
    assert row["mask"].sum() == 6 and (row["tokens"][6:] == 0).all()


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_read_disjoint_shards_covering_the_corpus(corpus, processes):
    config = DataConfig(source=corpus, batch_size=processes, row_bytes=N, row_patches=P, num_epochs=1, shuffle=False)
    seen = []
    for index in range(processes):
        shard = documents_in_order(corpus, 0, shuffle=False, index=index, count=processes)
        rows = all_rows(config, rows=process_share(processes, index, processes))
        stream = np.concatenate([encode(d.data) for d in shard])
        inputs = np.concatenate([r["tokens"][: int(r["mask"].sum())] for r in rows])
        np.testing.assert_array_equal(inputs, stream[: len(inputs)])
        seen += [d.origin for d in shard]
    everything = [d.origin for d in documents_in_order(corpus, 0, shuffle=False)]
    assert sorted(seen) == sorted(everything) and len(set(seen)) == len(seen)


def test_resume_gives_the_same_next_batch(corpus):
    config = DataConfig(source=corpus, batch_size=2, row_bytes=N, row_patches=P, seed=5)  # repeats forever
    it = iter(build_dataset(config))
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = [next(it) for _ in range(3)]
    again = iter(build_dataset(config))
    again.set_state(state)
    for want in expected:
        got = next(again)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_resume_through_orbax_and_grain_handler(corpus, tmp_path):
    import orbax.checkpoint as ocp

    config = DataConfig(source=corpus, batch_size=2, row_bytes=N, row_patches=P, seed=6)
    it = iter(build_dataset(config))
    for _ in range(4):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    want = next(it)
    fresh = iter(build_dataset(config))
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    got = next(fresh)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_bad_input_is_counted_and_strict_stops(corpus, caplog):
    stats = SourceStats()
    config = DataConfig(source=corpus, batch_size=1, row_bytes=N, row_patches=P, num_epochs=1)
    all_rows(config, stats=stats)
    assert stats.bad == 1 and stats.empty == 1 and stats.documents == 15
    assert "lines.jsonl:2: invalid JSON" in caplog.text
    strict = DataConfig(source=corpus, batch_size=1, row_bytes=N, row_patches=P, num_epochs=1, strict=True)
    with pytest.raises(Exception, match=r"lines\.jsonl:2: invalid JSON"):
        all_rows(strict)


def test_missing_source_fails_before_training(tmp_path):
    with pytest.raises(SourceError, match="no such file or directory"):
        build_dataset(DataConfig(source=str(tmp_path / "nowhere")))


def test_entropy_mode_needs_stored_entropies(corpus):
    config = DataConfig(
        source=corpus, batch_size=1, row_bytes=N, row_patches=P, num_epochs=1, patching=PatchingConfig(mode="entropy")
    )
    with pytest.raises(Exception, match="needs stored entropies"):
        all_rows(config)


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="row_patches"):
        DataConfig(row_patches=1)


def test_global_arrays_on_a_mesh(corpus):
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    sharding = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))
    config = DataConfig(source=corpus, batch_size=8, row_bytes=N, row_patches=P)
    batch = to_global(next(iter(build_dataset(config))), sharding)
    assert batch["tokens"].shape == (8, N) and batch["patch_lengths"].shape == (8, P)
    assert len(batch["tokens"].addressable_shards) == 8 and batch["tokens"].addressable_shards[0].data.shape == (1, N)


def test_default_corpus_needs_no_flags():
    train = open_corpus("default")
    validation = open_corpus("default:validation")
    assert len(train) > 1000 and 10 < len(validation) < len(train) // 10
    assert not set(train.files) & set(validation.files)
    assert any(f.endswith("pydoc_data/topics.py") for f in train.files + validation.files)
    batch = next(iter(build_dataset(DataConfig(batch_size=2, row_bytes=256, row_patches=96))))
    assert batch["mask"].all()  # plenty of text: full rows


def test_stored_entropies_drive_entropy_patching(corpus, tmp_path):
    from blt_jax.config import EntropyLMConfig, StackConfig
    from blt_jax.data.entropy_pass import PassOptions, run_pass
    from blt_jax.params import init_params

    config = EntropyLMConfig(StackConfig(32, 1, 4, 96, rope_theta=10000.0, window=16))
    params = init_params(config, jax.random.key(0))
    out = str(tmp_path / "entropies")
    run_pass(corpus, out, config, params, "test", PassOptions(docs_per_shard=4, chunk=32, lanes=8, progress=False))
    docs = documents_in_order(out, 0, shuffle=False)
    assert all(d.entropies is not None for d in docs)
    median = float(np.median(np.concatenate([d.entropies.astype(np.float32) for d in docs])))
    patching = PatchingConfig(mode="entropy", threshold=median)
    data = DataConfig(
        source=out, batch_size=1, row_bytes=N, row_patches=P, num_epochs=1, shuffle=False, patching=patching
    )
    rows = all_rows(data)
    flags = np.concatenate([prepare_document(d, patching)["starts"] for d in docs])
    assert 0.1 < flags.mean() < 0.9  # the threshold makes real decisions
    first = rows[0]
    n = check_row(first)
    cuts = np.cumsum(first["patch_lengths"])[:-1]
    starts = np.zeros(n + 1, bool)
    starts[cuts[cuts <= n]] = True
    starts[:2] = True
    expected = flags[: n + 1].copy()
    expected[:2] = True
    np.testing.assert_array_equal(starts, expected)


def test_hugging_face_streaming_with_a_stub(monkeypatch):
    """The `datasets` package is optional: a stub stands in for it (no network in tests)."""
    import sys
    import types

    examples = [{"text": f"example number {i}"} for i in range(40)] + [{"body": "no text"}]
    stub = types.ModuleType("datasets")
    stub.load_dataset = lambda name, subset, split, streaming: iter(examples)
    monkeypatch.setitem(sys.modules, "datasets", stub)
    config = DataConfig(source="hf:some/corpus:train", batch_size=2, row_bytes=N, row_patches=P, shuffle=False)
    from blt_jax.tokenizer import render

    seen = {}
    for index in range(2):
        inputs = [
            b["tokens"][r][: int(b["mask"][r].sum())]
            for b in build_dataset(config, process_share(2, index, 2))
            for r in range(1)
        ]
        text = render(np.concatenate(inputs))
        seen[index] = [i for i in range(40) if f"<s>example number {i}</s>" in text]
    assert all(i % 2 == 0 for i in seen[0]) and all(i % 2 == 1 for i in seen[1])  # disjoint shards
    assert len(seen[0]) + len(seen[1]) >= 30  # the tail of a stream may not fill a last batch

    it = iter(build_dataset(config))
    next(it)
    state = it.get_state()
    want = next(it)
    again = iter(build_dataset(config))
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["tokens"], want["tokens"])


def test_hugging_face_without_datasets_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        build_dataset(DataConfig(source="hf:any"))


def test_online_entropy_patching(corpus):
    from blt_jax.config import EntropyLMConfig, StackConfig
    from blt_jax.data.pipeline import OnlineEntropies
    from blt_jax.nn.entropy_lm import EntropyLM, entropies_from_logits
    from blt_jax.params import init_params

    config = EntropyLMConfig(StackConfig(32, 2, 4, 96, rope_theta=10000.0, window=16))
    params = jax.tree_util.tree_map(lambda x: x * 3.0 if x.ndim >= 2 else x, init_params(config, jax.random.key(1)))
    online = OnlineEntropies(config, params, chunk=32)
    patching = PatchingConfig(mode="entropy", threshold=2.0)
    single = jax.jit(lambda t: entropies_from_logits(EntropyLM(config).apply({"params": params}, t)))
    docs = documents_in_order(corpus, 0, shuffle=False)
    for doc in docs[:6]:
        got = prepare_document(doc, patching, online)
        tokens = encode(doc.data)
        ent = np.asarray(single(tokens[None]))[0]
        np.testing.assert_allclose(online(tokens), ent, atol=2e-5)
        want = np.asarray(prepare_document(type(doc)(doc.data, doc.origin, ent), patching)["starts"])
        np.testing.assert_array_equal(got["starts"], want)
    data = DataConfig(source=corpus, batch_size=1, row_bytes=N, row_patches=P, num_epochs=1, patching=patching)
    rows = all_rows(data, online=online)
    assert rows and all(check_row(r) > 0 for r in rows)


def test_byte_rows_without_patches(corpus):
    config = DataConfig(source=corpus, batch_size=1, row_bytes=N, row_patches=0, num_epochs=1, shuffle=False)
    rows = all_rows(config)
    assert all("patch_lengths" not in r and r["mask"].sum() == N for r in rows[:-1])
    stream = np.concatenate([encode(d.data) for d in documents_in_order(corpus, 0, shuffle=False)])
    inputs = np.concatenate([r["tokens"][: int(r["mask"].sum())] for r in rows])
    np.testing.assert_array_equal(inputs, stream[:-1])


def _batches(iterators, steps):
    """`steps` global batches assembled from per-process iterators (processes in row order)."""
    out = []
    for _ in range(steps):
        parts = [next(it) for it in iterators]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def _assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("shards", [0, 4, 1])  # 1: fewer shards than processes, each reads it and keeps its rows
def test_the_global_batch_does_not_depend_on_the_process_count(corpus, shards):
    config = DataConfig(source=corpus, batch_size=8, shards=shards, row_bytes=N, row_patches=P, seed=2)
    single = _batches([iter(build_dataset(config))], 6)
    for processes in (2, 4):
        parts = [iter(build_dataset(config, process_share(8, i, processes))) for i in range(processes)]
        _assert_same(_batches(parts, 6), single)


def test_a_stream_saved_by_two_processes_continues_on_four_and_on_one(corpus):
    """Each shard's state travels on its own: the merged state of 2 processes restores onto 4 or 1,
    and the batches go on exactly as in an uninterrupted run (nothing repeated, nothing skipped)."""
    config = DataConfig(source=corpus, batch_size=8, row_bytes=N, row_patches=P, seed=4)
    straight = _batches([iter(build_dataset(config))], 9)
    two = [iter(build_dataset(config, process_share(8, i, 2))) for i in range(2)]
    _assert_same(_batches(two, 5), straight[:5])
    merged = {"num_shards": 8, "shards": {}}
    for it in two:  # what `global_state` gathers over processes, through JSON as a checkpoint holds it
        merged["shards"].update(json.loads(json.dumps(it.get_state()))["shards"])
    for processes in (4, 1):
        moved = [iter(build_dataset(config, process_share(8, i, processes))) for i in range(processes)]
        for it in moved:
            it.set_state(merged)
        _assert_same(_batches(moved, 4), straight[5:])


def test_state_of_another_shard_count_is_refused_in_one_line(corpus):
    config = DataConfig(source=corpus, batch_size=8, row_bytes=N, row_patches=P)
    state = iter(build_dataset(config)).get_state()
    other = iter(build_dataset(dataclasses.replace(config, shards=4)))
    with pytest.raises(InputError, match=r"^the saved data stream has 8 shards .* --config\.data\.shards=8") as e:
        other.set_state(state)
    assert "\n" not in str(e.value)
    half = iter(build_dataset(config, process_share(8, 0, 2)))
    with pytest.raises(InputError, match=r"lacks shard\(s\) 4-7"):
        iter(build_dataset(config)).set_state(half.get_state())


def test_shards_must_divide_the_batch():
    with pytest.raises(ConfigError, match="shards: 3 does not divide batch_size=8"):
        DataConfig(batch_size=8, shards=3)


def test_process_rows_follow_the_mesh():
    from blt_jax.parallel import process_rows

    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    assert process_rows(jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp"))), 16) == list(range(16))
    assert process_rows(jax.sharding.NamedSharding(mesh, jax.P()), 16) == list(range(16))
