"""`blt-jax` on `gs://` paths against a real Cloud Storage API (fake-gcs-server on 127.0.0.1): a run
whose workdir is a bucket (checkpoints, config, shardings, metrics, TensorBoard all land there), killed
with SIGKILL and resumed from the bucket; eval, generate and export reading it (and the export written
to and loaded from the bucket); the entropy pass
from and to a bucket; training on text, JSONL and Parquet corpora and on stored entropies read from it.
"""

import io
import json
import os
import signal
import time

import gcs_server
import pytest
from user import TINY, blt_jax, start, tiny_train

BUCKET = "blt"
STEPS = 16
TRAIN = tiny_train(STEPS)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    server = gcs_server.start(tmp_path_factory.mktemp("gcs_log"))
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    return tmp_path_factory.mktemp("fresh")


def run(gcs, cwd, *args, **kwargs):
    return blt_jax(*args, cwd=cwd, **gcs.client_env(), **kwargs)


def _final_loss(gcs, run_name: str) -> tuple[int, float]:
    rows = [json.loads(line) for line in gcs.read(BUCKET, f"{run_name}/metrics.jsonl").decode().splitlines()]
    rows = [row for row in rows if "loss" in row]
    return rows[-1]["step"], rows[-1]["loss"]


@pytest.fixture(scope="module")
def straight(gcs, tmp_path_factory):
    """An uninterrupted run in the bucket, started from an empty directory (which stays empty)."""
    empty = tmp_path_factory.mktemp("empty")
    result = run(gcs, empty, "train", *TRAIN, "--workdir", f"gs://{BUCKET}/straight")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not os.listdir(empty)  # nothing was written locally
    return _final_loss(gcs, "straight")


def test_a_run_in_a_bucket_writes_everything_there(gcs, straight):
    names = gcs.names(BUCKET, "straight/")
    for name in ("straight/config.json", "straight/shardings.json", "straight/metrics.jsonl"):
        assert name in names, names
    assert any(n.startswith("straight/tensorboard/events.out.tfevents") for n in names), names
    steps = {
        n.split("/")[2] for n in names if n.startswith("straight/checkpoints/") and n.endswith("commit_success.txt")
    }
    assert steps == {"8", "12", "16"}, names  # keep_checkpoints=3 deleted step 4 from the bucket
    assert json.loads(gcs.read(BUCKET, "straight/config.json"))["train"]["steps"] == STEPS
    assert straight[0] == STEPS


def test_killed_with_sigkill_resumes_from_the_bucket_to_the_same_loss(gcs, cwd, straight):
    proc = start("train", *TRAIN, "--workdir", f"gs://{BUCKET}/killed", cwd=cwd, **gcs.client_env())
    deadline = time.time() + 600
    marker = "killed/checkpoints/4/commit_success.txt"
    while time.time() < deadline and proc.poll() is None and marker not in gcs.names(BUCKET, "killed/checkpoints/4/"):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # mid-run: 12 steps remain
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, ("the run ended before it could be killed", err[-2000:])
    assert marker in gcs.names(BUCKET, "killed/checkpoints/4/"), err[-2000:]
    assert "killed/checkpoints/16/commit_success.txt" not in gcs.names(BUCKET, "killed/")
    result = run(gcs, cwd, "train", *TRAIN, "--workdir", f"gs://{BUCKET}/killed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step" in result.stderr
    assert _final_loss(gcs, "killed") == (straight[0], pytest.approx(straight[1], rel=1e-6, abs=1e-6))


def test_eval_generate_and_export_read_a_run_in_a_bucket(gcs, cwd, straight):
    (cwd / "held_out.txt").write_text("def area(r):\n    return 3.14159 * r * r\n" * 40)  # > one batch
    result = run(gcs, cwd, "eval", "--checkpoint", f"gs://{BUCKET}/straight", "--data", "held_out.txt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per byte" in result.stdout and "over 0 bytes" not in result.stdout

    result = run(
        gcs, cwd, "generate", "--checkpoint", f"gs://{BUCKET}/straight", "--prompt", "import ", "--max-new-bytes", "16"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from_bucket = result.stdout

    # Exported into the bucket, then loaded from there: the same bytes.
    result = run(gcs, cwd, "export", f"gs://{BUCKET}/straight", f"gs://{BUCKET}/exported")
    assert result.returncode == 0, result.stderr[-3000:]
    assert gcs.names(BUCKET, "exported/") == ["exported/blt_jax.json", "exported/params.safetensors"]
    result = run(
        gcs, cwd, "generate", "--checkpoint", f"gs://{BUCKET}/exported", "--prompt", "import ", "--max-new-bytes", "16"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == from_bucket

    # lm-eval tasks on the run in the bucket, results written to the bucket.
    result = run(gcs, cwd, "make-tasks", "cute", "tasks", "--kinds", "contains_char", "--n", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(
        gcs,
        cwd,
        "lm-eval",
        "--checkpoint",
        f"gs://{BUCKET}/straight",
        "--tasks",
        "cute_contains_char",
        "--include-path",
        "tasks",
        "--output",
        f"gs://{BUCKET}/lm_eval.json",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(gcs.read(BUCKET, "lm_eval.json"))["results"]["cute_contains_char"]
    assert scores["acc,none"] in {k / 8 for k in range(9)}, scores


def _parquet_bytes(texts) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(gcs):
    """gs://blt/corpus: plain text files, a JSONL file and a Parquet file."""
    for i in range(3):
        gcs.upload(BUCKET, f"corpus/text/{i}.txt", (f"def g{i}(y):\n    return y - {i}\n" * 30).encode())
    lines = [json.dumps({"text": f"class C{i}:\n    value = {i}\n" * 20}) for i in range(4)]
    gcs.upload(BUCKET, "corpus/docs.jsonl", ("\n".join(lines) + "\n").encode())
    gcs.upload(BUCKET, "corpus/table.parquet", _parquet_bytes([f"x{i} = [{i}] * {i}\n" * 25 for i in range(4)]))
    return f"gs://{BUCKET}/corpus"


def test_entropy_pass_from_and_to_a_bucket_then_training_on_bucket_corpora(gcs, cwd, corpus):
    out = f"gs://{BUCKET}/entropies"
    patch = ["patch", "--corpus", corpus, "--out", out, "--config", TINY, "--no-progress"]
    patch += ["--docs-per-shard", "4", "--chunk", "64"]  # three shards of the 11 documents
    result = run(gcs, cwd, *patch)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "11 documents" in result.stdout, result.stdout  # 3 text files + 4 JSONL lines + 4 Parquet rows
    manifest = json.loads(gcs.read(BUCKET, "entropies/manifest.json"))
    assert manifest["complete"] and len(manifest["shards"]) == 3
    assert manifest["source"] == corpus
    assert all(f"entropies/{s['name']}" in gcs.names(BUCKET, "entropies/") for s in manifest["shards"])

    # Run again: every shard is already in the bucket.
    result = run(gcs, cwd, *patch)
    assert result.returncode == 0, result.stderr[-3000:]

    short = [
        "--config.train.steps=3",
        "--config.train.warmup_steps=1",
        "--config.train.checkpoint_every=0",
        f"--config.eval.source={corpus}/docs.jsonl",
    ]
    result = run(gcs, cwd, "train", *TRAIN, *short, f"--config.data.source={corpus}", "--workdir", "runs/mixed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3: loss" in result.stdout

    entropy = [
        "--config.data.patching.mode=entropy",
        "--config.data.patching.threshold=2.0",
        "--config.eval.patching.mode=entropy",
        "--config.eval.patching.threshold=2.0",
        f"--config.eval.source={out}",
    ]
    result = run(
        gcs,
        cwd,
        "train",
        *TRAIN,
        *short,
        *entropy,
        f"--config.data.source={out}",
        "--workdir",
        f"gs://{BUCKET}/entropy_patched",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3: loss" in result.stdout
    config = json.loads(gcs.read(BUCKET, "entropy_patched/config.json"))
    assert config["data"]["patching"]["mode"] == "entropy" and config["data"]["source"] == out


def test_a_missing_bucket_is_one_line(gcs, cwd):
    result = run(gcs, cwd, "train", *TRAIN, "--workdir", "gs://no-such-bucket/run")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("blt-jax train: error: gs://no-such-bucket/run"), result.stderr
