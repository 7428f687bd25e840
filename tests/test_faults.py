"""What training survives, each fault injected: steps whose loss is not finite (skipped, counted,
stopped after too many in a row, or rewound to the last checkpoint)."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from user import TINY, TPU_NOISE, blt_jax, tiny_train


def _errors(stderr: str) -> list[str]:
    return [
        line for line in stderr.splitlines() if line.startswith("blt-jax") and not any(n in line for n in TPU_NOISE)
    ]


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_a_step_whose_loss_is_not_finite_changes_nothing_but_the_step_count():
    """The train step on a batch whose loss is NaN keeps the parameters and Adam's moments bit for bit
    and reports `skipped`; the next finite batch updates as if the bad one had not been there."""
    from blt_jax.train.state import TrainState
    from blt_jax.train.step import train_step

    def objective(params, batch):  # a linear model whose loss is NaN when the batch says so
        pred = batch["x"] @ params["w"]
        total = jnp.sum((pred - batch["y"]) ** 2) * jnp.where(batch["poison"], jnp.nan, 1.0)
        count = jnp.float32(batch["x"].shape[0])
        return total, (total, count, {})

    tx = optax.adamw(1e-2)
    params = {"w": jnp.ones((3, 2))}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    rng = np.random.default_rng(0)
    good = {"x": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "y": jnp.zeros((4, 2)), "poison": jnp.bool_(False)}
    bad = dict(good, poison=jnp.bool_(True))
    step = jax.jit(lambda s, b: train_step(s, b, {}, objective=objective, optimizer=lambda _: (tx, lambda n: 1e-2)))

    after_bad, metrics = step(state, bad)
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(after_bad.step) == 1
    for before, after in zip(
        jax.tree_util.tree_leaves((state.params, state.opt_state)),
        jax.tree_util.tree_leaves((after_bad.params, after_bad.opt_state)),
    ):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    after_good, metrics = step(after_bad, good)
    assert float(metrics["skipped"]) == 0.0
    direct, _ = step(state, good)
    np.testing.assert_array_equal(np.asarray(after_good.params["w"]), np.asarray(direct.params["w"]))


def test_a_run_whose_loss_stays_nan_stops_in_one_line_with_its_checkpoints(tmp_path):
    """The issue's case: a learning rate of 1e30 used to run to the end, exit 0 and leave NaN
    checkpoints. Now every NaN step is skipped and counted, and after train.max_skipped_steps in a row
    the run stops naming the step; its newest checkpoint is finite and loads."""
    result = blt_jax(
        "train",
        "--config",
        TINY,
        "--workdir",
        "run",
        "--no-progress",
        "--config.train.learning_rate=1e30",
        "--config.train.steps=40",
        "--config.train.warmup_steps=4",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=2",
        "--config.train.max_skipped_steps=5",
        "--config.train.eval_every=0",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("blt-jax train: error: training stopped at step ")
    assert "not finite in 5 steps in a row" in lines[0] and "train.max_skipped_steps=5" in lines[0]
    stopped = int(lines[0].split("training stopped at step ")[1].split(":")[0])
    assert stopped < 40
    rows = [r for r in _rows(tmp_path / "run") if "skipped_steps" in r]
    assert rows[-1]["step"] == stopped and rows[-1]["skipped_steps"] == 5
    assert "update was skipped" in result.stderr
    from blt_jax.api import from_pretrained

    model = from_pretrained(str(tmp_path / "run"))  # the newest checkpoint: the parameters before the skips
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(model.params))


def test_a_resumed_run_drops_the_metrics_rows_its_last_session_wrote_after_the_checkpoint(tmp_path):
    """A session killed after step 7 with its newest checkpoint at step 4 had written rows 5-7; the
    resumed run writes them again, so the writer keeps only the rows up to the checkpoint (and drops
    a last row cut short by the crash)."""
    from blt_jax.metrics.writers import MetricsWriter

    run = tmp_path / "run"
    run.mkdir()
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 8)]
    (run / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 8, "lo')
    writer = MetricsWriter(str(run), enabled=True, resumed_at=4)
    for s in range(5, 9):
        writer.write(s, {"loss": 2.0 / s})
    writer.close()
    steps = [r["step"] for r in _rows(run)]
    assert steps == list(range(1, 9))
    assert _rows(run)[5]["loss"] == pytest.approx(2.0 / 6)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A user's directory with a corpus of ASCII files and one document holding 'þ' (UTF-8 C3 BE), and
    initial weights whose embedding of byte 0xBE is NaN: any batch holding that document has a NaN
    loss, every other batch trains normally (the table row of a byte no batch reads gets no
    gradient)."""
    from blt_jax.api import BLTModel
    from blt_jax.experiment import load_experiment
    from blt_jax.models import model_config_from_dict
    from blt_jax.tokenizer import OFFSET

    work = tmp_path_factory.mktemp("poisoned")
    corpus = work / "corpus"
    corpus.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "pi", "rho", "sigma", "tau", "omega", "kappa"]
    rng = np.random.default_rng(0)
    for i in range(24):
        text = " ".join(rng.choice(words, 200)) + "\n"
        (corpus / f"doc{i:02d}.txt").write_text(text)
    (corpus / "doc_poison.txt").write_text("the thorn letter \u00fe appears only here\n")
    config = model_config_from_dict(load_experiment(TINY).model)
    model = BLTModel.random(config, seed=3)
    params = jax.tree_util.tree_map(np.array, model.params)
    params["local_encoder"]["tok_embeddings"]["embedding"][OFFSET + 0xBE] = np.nan
    BLTModel(config, params, model.entropy_params).save(str(work / "poisoned_init"))
    return work


def _train_poisoned(work, workdir: str, *extra):
    return blt_jax(
        "train",
        "--config",
        TINY,
        "--workdir",
        workdir,
        "--no-progress",
        "--config.data.source=corpus",
        "--config.eval.source=corpus",
        "--config.train.init_from=poisoned_init",
        "--config.train.steps=24",
        "--config.train.warmup_steps=2",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=4",
        "--config.train.eval_every=0",
        *extra,
        cwd=work,
    )


def test_a_document_that_makes_the_loss_nan_is_skipped_and_training_goes_on(poisoned):
    result = _train_poisoned(poisoned, "skip")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in _rows(poisoned / "skip") if "skipped_steps" in r]
    skipped = rows[-1]["skipped_steps"]
    assert 1 <= skipped < 24 and rows[-1]["step"] == 24
    losses = [r["loss"] for r in rows]
    assert sum(loss is None for loss in losses) == skipped  # NaN is written as null, once per skipped step
    assert result.stderr.count("update was skipped") == skipped
    finite = [loss for loss in losses if loss is not None]
    assert finite[-1] < finite[0]  # the other batches trained
    evals = [r for r in _rows(poisoned / "skip") if "eval_bpb" in r]
    assert evals and all(r["eval_bpb"] is None or np.isfinite(r["eval_bpb"]) for r in evals)


def test_rewind_on_spike_goes_back_to_the_last_checkpoint_and_on_past_the_bad_batch(poisoned):
    result = _train_poisoned(poisoned, "rewind", "--config.train.rewind_on_spike=true")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in _rows(poisoned / "rewind") if "rewinds" in r]
    assert rows[-1]["rewinds"] >= 1 and rows[-1]["step"] == 24
    assert "rewound to checkpoint" in result.stderr


# ---- Cloud Storage faults (a fault-injecting proxy in front of fake-gcs-server) ------------------------

BUCKET = "blt"
GCS_STEPS = 16
GCS_TRAIN = tiny_train(GCS_STEPS)
INJECTED: dict = {}  # fault kind -> times injected, over the tests of this module (the README's table)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """fake-gcs-server with a bucket, a proxy in front of it (no faults until a test sets them), and the
    losses of a fault-free run straight to the server: {step: loss}."""
    import fault_proxy
    import gcs_server

    server = gcs_server.start(tmp_path_factory.mktemp("gcs_log"))
    server.create_bucket(BUCKET)
    proxy = fault_proxy.FaultProxy(server.url)
    result = blt_jax(
        "train",
        *GCS_TRAIN,
        "--workdir",
        f"gs://{BUCKET}/straight",
        cwd=tmp_path_factory.mktemp("straight"),
        **server.client_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield server, proxy, _bucket_losses(server, "straight")
    proxy.stop()
    server.stop()
    print("faults injected:", dict(INJECTED))


def _bucket_losses(server, run: str) -> dict[int, float]:
    rows = [json.loads(line) for line in server.read(BUCKET, f"{run}/metrics.jsonl").decode().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"metrics rows repeated: {steps}"  # none lost or written twice
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _complete_steps(server, run: str) -> set[int]:
    names = server.names(BUCKET, f"{run}/checkpoints/")
    return {int(n.split("/")[2]) for n in names if n.count("/") == 3 and n.endswith("/commit_success.txt")}


def _through(bucket, faults, run: str, cwd, **extra):
    server, proxy, _ = bucket
    proxy.faults = faults
    try:
        return blt_jax(
            "train",
            *GCS_TRAIN,
            "--workdir",
            f"gs://{BUCKET}/{run}",
            cwd=cwd,
            **proxy.env(server.client_env(), server.url),
            **extra,
        )
    finally:
        proxy.faults = type(faults)()
        INJECTED.update({k: INJECTED.get(k, 0) + v for k, v in proxy.injected.items()})
        proxy.injected.clear()


@pytest.mark.long
def test_429s_503s_500s_resets_and_slow_answers_change_nothing(bucket, tmp_path):
    """Every 9th request answered 429, 503 or 500, every 23rd connection reset (a read cut mid-body,
    a write dropped), every 29th answer a second late: the clients' retries hold, the run ends with
    the fault-free losses at every step, no metrics row lost or written twice, and every checkpoint
    kept is complete."""
    import fault_proxy

    server, proxy, straight = bucket
    faults = fault_proxy.Faults(status_every=9, reset_every=23, slow_every=29, slow_seconds=1.0)
    result = _through(bucket, faults, "flaky", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {k for k, v in INJECTED.items() if v} >= {"429", "503", "500", "reset", "slow"}, INJECTED
    losses = _bucket_losses(server, "flaky")
    assert sorted(losses) == list(range(1, GCS_STEPS + 1))
    for step, loss in straight.items():
        assert losses[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    assert _complete_steps(server, "flaky") == {8, 12, 16}


@pytest.mark.long
def test_a_bucket_that_stays_down_stops_the_run_in_one_line_and_it_resumes_once_back(bucket, tmp_path):
    """Once checkpoint 4 is complete the bucket answers 503 to everything: past the retry budget
    (BLT_JAX_STORAGE_RETRY_SECONDS) the run stops in one line naming where it was writing, exit 2; the
    bucket back, the next run resumes from its newest complete checkpoint and ends with the fault-free
    losses."""
    import threading
    import time

    import fault_proxy

    server, proxy, straight = bucket

    def down_after_first_checkpoint():
        deadline = time.time() + 600
        while time.time() < deadline and 4 not in _complete_steps(server, "down"):
            time.sleep(0.1)
        proxy.faults = fault_proxy.Faults(down=True)

    watcher = threading.Thread(target=down_after_first_checkpoint, daemon=True)
    watcher.start()
    result = _through(bucket, fault_proxy.Faults(), "down", tmp_path, BLT_JAX_STORAGE_RETRY_SECONDS=5)
    watcher.join()
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"blt-jax train: error: gs://{BUCKET}/down"), lines
    assert "503" in lines[0] or "down" in lines[0], lines
    kept = _complete_steps(server, "down")
    assert kept and max(kept) < GCS_STEPS
    result = _through(bucket, fault_proxy.Faults(), "down", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from step {max(kept)}" in result.stderr
    assert _bucket_losses(server, "down")[GCS_STEPS] == pytest.approx(straight[GCS_STEPS], rel=1e-6, abs=1e-6)


@pytest.mark.long
def test_killed_between_the_arrays_and_the_commit_marker_resumes_from_the_previous_checkpoint(bucket, tmp_path):
    """The upload of checkpoint 8's commit marker is held at the proxy (its arrays are written) and the
    run is killed with SIGKILL: the next run ignores the partial step 8, resumes from step 4, and ends
    with the fault-free losses."""
    import signal

    import fault_proxy
    from user import start

    server, proxy, straight = bucket
    proxy.held.clear()
    proxy.faults = fault_proxy.Faults(hang_on="killed/checkpoints/8/commit_success.txt")
    proc = start(
        "train",
        *GCS_TRAIN,
        "--workdir",
        f"gs://{BUCKET}/killed",
        cwd=tmp_path,
        **proxy.env(server.client_env(), server.url),
    )
    try:
        assert proxy.held.wait(600), "the commit marker of step 8 was never written"
        assert any(n.startswith("killed/checkpoints/8/state/") for n in server.names(BUCKET, "killed/"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proxy.faults = fault_proxy.Faults()
        proxy.release()
    assert _complete_steps(server, "killed") == {4}
    result = blt_jax("train", *GCS_TRAIN, "--workdir", f"gs://{BUCKET}/killed", cwd=tmp_path, **server.client_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 4" in result.stderr
    assert _bucket_losses(server, "killed")[GCS_STEPS] == pytest.approx(straight[GCS_STEPS], rel=1e-6, abs=1e-6)


# ---- a full disk and corrupt files -------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 6 MB tmpfs at tmp_path/disk (a disk that fills up), grown to 64 MB by calling the result."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"a full disk needs permission to mount a tmpfs here: {made.stderr.strip()}")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

    yield grow
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.long
def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_from_the_previous_checkpoint(tmp_path, tiny_disk):
    """A 6 MB disk holds the run's first checkpoint (the tiny BLT's 280K parameters with their Adam
    moments are 3.4 MB) but not the second: the run stops in one line naming the checkpoints and the bytes,
    exit 2; with more space the same command resumes from the first and finishes."""
    args = [
        "train",
        "--config",
        TINY,
        "--workdir",
        "disk/run",
        "--no-progress",
        "--config.train.steps=8",
        "--config.train.warmup_steps=1",
        "--config.train.checkpoint_every=2",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.train.keep_checkpoints=3",
    ]
    result = blt_jax(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1, lines
    assert "no space left on the device" in lines[0] and "bytes" in lines[0], lines
    assert "disk/run" in lines[0], lines
    complete = sorted(int(p.name) for p in (tmp_path / "disk/run/checkpoints").iterdir() if p.name.isdigit())
    assert complete and complete[-1] < 8, complete
    tiny_disk()
    result = blt_jax(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from step {complete[-1]}" in result.stderr
    steps = [r["step"] for r in _rows(tmp_path / "disk/run") if "loss" in r]
    assert steps == list(range(1, 9))  # every row once: those after the checkpoint were dropped and redone


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from blt_jax.api import BLTModel
    from blt_jax.experiment import load_experiment
    from blt_jax.models import model_config_from_dict

    work = tmp_path_factory.mktemp("saved")
    config = model_config_from_dict(load_experiment(TINY).model)
    BLTModel.random(config, seed=1).save(str(work / "model"))
    return work


def test_a_truncated_safetensors_file_is_one_line_naming_it(saved_model):
    weights = saved_model / "model" / "params.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    try:
        result = blt_jax("generate", "--checkpoint", "model", "--prompt", "x", "--max-new-bytes", "4", cwd=saved_model)
    finally:
        weights.write_bytes(data)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1 and "params.safetensors" in lines[0] and "inconsistent" in lines[0], lines


@pytest.fixture(scope="module")
def corrupt_work(tmp_path_factory):
    """A user's directory with a corpus, a 4-step run with checkpoints 2 and 4, and the corpus's stored
    entropies in three shards."""
    work = tmp_path_factory.mktemp("corrupt")
    corpus = work / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"{i}.txt").write_text("".join(f"def g{i}(y): return y - {j}\n" for j in range(60)))
    result = blt_jax(
        "train",
        "--config",
        TINY,
        "--workdir",
        "run",
        "--no-progress",
        "--config.train.steps=4",
        "--config.train.warmup_steps=1",
        "--config.train.checkpoint_every=2",
        "--config.train.eval_every=0",
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    result = blt_jax(*PATCH, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


# The corpus's entropies in shards of 4 documents (fixture `corrupt_work`, and again after a repair).
PATCH = ["patch", "--corpus", "corpus", "--out", "ent", "--config", TINY, "--no-progress"]
PATCH += ["--docs-per-shard", "4", "--chunk", "64"]  # three shards of the 12 documents

ENTROPY_TRAIN = [
    "--config",
    TINY,
    "--no-progress",
    "--config.train.steps=3",
    "--config.train.warmup_steps=1",
    "--config.train.checkpoint_every=0",
    "--config.data.source=ent",
    "--config.eval.source=ent",
    "--config.data.patching.mode=entropy",
    "--config.data.patching.threshold=2.0",
    "--config.eval.patching.mode=entropy",
    "--config.eval.patching.threshold=2.0",
]


@pytest.mark.long
def test_a_truncated_entropy_shard_is_one_line_naming_it_and_the_pass_rewrites_it(corrupt_work):
    shard = corrupt_work / "ent" / "entropies-00001.array_record"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    result = blt_jax("train", *ENTROPY_TRAIN, "--workdir", "run_ent", cwd=corrupt_work)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1 and "entropies-00001.array_record: not a readable ArrayRecord shard" in lines[0], lines
    # What the line says to do: the pass rewrites the one shard, and training reads it.
    shard.unlink()
    (corrupt_work / "ent" / "entropies-00001.json").unlink()
    result = blt_jax(*PATCH, cwd=corrupt_work)
    assert result.returncode == 0 and "wrote entropies-00001.array_record" in result.stderr, result.stderr[-3000:]
    result = blt_jax("train", *ENTROPY_TRAIN, "--workdir", "run_ent", cwd=corrupt_work)
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_altered_byte_of_a_stored_record_is_caught_naming_the_shard_and_record(tmp_path):
    """A unit check of what the CLI test below sees once: a byte of the records' region flipped (the
    first 200 bytes each, then every 40th of the rest) fails the read of its record, naming shard and
    record; no read returns other data."""
    from blt_jax.data.sources import open_corpus
    from blt_jax.errors import InputError
    from blt_jax.patching import store

    out = tmp_path / "ent"
    out.mkdir()
    docs = [f"def h{i}(z): return z * {i}\n".encode() * 40 for i in range(6)]
    for k, part in enumerate((docs[:2], docs[2:])):
        store.write_shard(
            str(out / store.shard_name(k)),
            [store.encode_record(d, np.linspace(0, 3, len(d) + 2), f"doc{2 * k + i}") for i, d in enumerate(part)],
        )
    store.save_manifest(str(out), {"shards": [{"name": store.shard_name(k)} for k in range(2)]})
    shard = out / store.shard_name(1)
    clean = shard.read_bytes()
    records_end = clean.find(bytes(64))
    for offset in list(range(0, 200, 3)) + list(range(200, records_end, max(1, records_end // 40))):
        data = bytearray(clean)
        data[offset] ^= 0x55
        shard.write_bytes(bytes(data))
        try:
            source = open_corpus(str(out))
        except InputError as error:  # the file header or chunk index was hit: the shard does not open
            assert str(error).startswith(f"{shard}: not a readable ArrayRecord shard"), error
            continue
        read = []
        for index in range(len(source)):
            try:
                read.append(source[index].data)
            except InputError as error:
                assert re.match(rf"{re.escape(str(shard))}: record [0-3] is corrupt \(", str(error)), error
        assert set(read) <= set(docs), offset  # never other data
        # The first 64 bytes are riegeli's file signature, which random access does not read: a flip
        # there changes no record. From there on, the one record a flip lands in fails.
        assert len(read) == (len(docs) if offset < 64 else len(docs) - 1), offset
    shard.write_bytes(clean)
    assert [open_corpus(str(out))[i].data for i in range(len(docs))] == docs


@pytest.mark.long
def test_an_entropy_shard_altered_in_place_is_one_line_naming_it_and_its_record(corrupt_work, tmp_path):
    """One byte of a stored record changed (the file still opens: riegeli's chunk hash catches it when
    the record is read, mid-run): training stops in one line naming the shard and the record."""
    import shutil

    shutil.copytree(corrupt_work / "ent", tmp_path / "ent")
    shutil.copytree(corrupt_work / "corpus", tmp_path / "corpus")
    shard = tmp_path / "ent" / "entropies-00002.array_record"
    data = bytearray(shard.read_bytes())
    records_end = data.find(bytes(64))  # the records' chunks come first, then zero padding, then the index
    assert records_end > 1000, records_end
    data[records_end // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    steps = [a if not a.startswith("--config.train.steps=") else "--config.train.steps=60" for a in ENTROPY_TRAIN]
    result = blt_jax("train", *steps, "--workdir", "run_altered", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1, lines
    assert re.search(r"entropies-00002\.array_record: record [0-3] is corrupt \(.*hash mismatch", lines[0]), lines
    assert "run `blt-jax patch` again" in lines[0]


@pytest.mark.long
def test_a_checkpoint_missing_its_arrays_is_passed_over_for_the_previous_one(corrupt_work):
    """The newest checkpoint's array files deleted: `blt-jax eval` names it unreadable and scores the
    previous one (training does the same, and sets the bad one aside); text too short for one batch
    is one line, not a score of 0 bits over 0 bytes."""
    import shutil

    held = corrupt_work / "held.txt"
    held.write_text("".join(f"def f(x): return x + {i}\n" for i in range(200)))
    arrays = corrupt_work / "run" / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d"
    backup = corrupt_work / "arrays_backup"
    shutil.copytree(arrays, backup)
    shutil.rmtree(arrays)
    try:
        result = blt_jax("eval", "--checkpoint", "run", "--data", "held.txt", cwd=corrupt_work)
    finally:
        shutil.copytree(backup, arrays)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "checkpoint 4 of" in result.stderr
        and "unreadable" in result.stderr
        and "trying the previous one" in result.stderr
    )
    assert "bits per byte" in result.stdout and "over 0 bytes" not in result.stdout
    (corrupt_work / "short.txt").write_text("x = 1\n")
    result = blt_jax("eval", "--checkpoint", "run", "--data", "short.txt", cwd=corrupt_work)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1 and "short.txt: too little text for one evaluation batch" in lines[0], lines


@pytest.mark.long
def test_training_sets_a_checkpoint_missing_its_arrays_aside_and_resumes_from_the_previous(corrupt_work, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(corrupt_work / "run", run)
    shutil.rmtree(run / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d")
    result = blt_jax(
        "train",
        "--config",
        TINY,
        "--workdir",
        "run",
        "--no-progress",
        "--config.train.steps=6",
        "--config.train.warmup_steps=1",
        "--config.train.checkpoint_every=2",
        "--config.train.eval_every=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint 4 in" in result.stderr and "unreadable" in result.stderr
    assert "resumed from step 2" in result.stderr
    assert (run / "checkpoints" / "4.unreadable").is_dir()  # kept for inspection, out of the way
    # Rows every 10 steps and at the end: the first session's row of step 4 came after the checkpoint
    # it resumed from (2), so it was dropped, and step 6 was logged once.
    steps = [r["step"] for r in _rows(run) if "loss" in r]
    assert steps == [6]
