"""Training as several JAX processes on one machine, as a pod's hosts run it (`launch/local_multihost.py`:
the same `blt-jax train` command per process, real collectives over gloo).

Every run is compared with one `blt-jax train` process over the same 8 devices: 2 x 4 and 4 x 2
processes see the same global batches (equal patch counts every step) and end with the same
parameters. They are not bitwise equal: the gradient's sum over the 8 devices is reduced in another
order by gloo than inside one process (losses then differ in the 7th digit), and Adam's normalised
update turns such rounding into parameter differences of a few 1e-6 (3e-6 measured after 10 steps); the tests allow
1e-6 relative on losses and 2e-5 absolute on parameters (under 1% of the 3e-3 learning rate that
bounds one step's move). A data-order or sharding mistake moves losses in the 2nd digit.

Also: one writer of metrics, TensorBoard and checkpoints (with every shard's data state); SIGTERM to
one process stops every process after the same step with a complete checkpoint; a run resumes on
another process count (2 -> 4, 4 -> 1) and ends where the single process ends; a dead process stops
the others. The 2 x 4 run's workdir is in a bucket of a local Cloud Storage server, the others are
shared local directories."""

import json
import os
import signal
import subprocess
import sys
import time

import gcs_server
import numpy as np
import pytest
import shared_runs
from user import TINY, user_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_multihost.py")
GRACE = 3  # seconds (--peer-grace) a survivor gets once its peer died, in the test of a lost process
STEPS = 16  # room for a SIGTERM to take effect before the end on a loaded machine (~3 steps seen)
TRAIN = [
    f"--config.train.steps={STEPS}",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=100",
    "--config.train.eval_every=0",
    "--config.train.eval_batches=1",
]


def launcher(tmp, name, processes=2, workdir=None, grace=None):
    """The launcher's command line for a run `name` as `processes` x (8 / processes) devices (workdir
    `runs/<name>` unless given, logs under `tmp`; `grace`: the launcher's --peer-grace)."""
    return [
        sys.executable,
        LAUNCHER,
        *(["--peer-grace", str(grace)] if grace is not None else []),
        "--num-processes",
        str(processes),
        "--devices",
        str(8 // processes),
        "--config",
        TINY,
        "--workdir",
        workdir or f"runs/{name}",
        "--logs",
        f"logs/{name}",
        *TRAIN,
    ]


def loss_rows(text: str) -> list[dict]:
    return [row for row in map(json.loads, text.splitlines()) if "loss" in row]


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return loss_rows(f.read())


def signal_one_process(tmp, name: str, after_steps: int, sig: int, processes: int = 2, grace=None) -> subprocess.Popen:
    """Starts run `name` as `processes` processes and, once `after_steps` steps are logged, sends `sig`
    to process 1 alone; returns the launcher's process."""
    proc = subprocess.Popen(
        launcher(tmp, name, processes, grace=grace),
        cwd=tmp,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workdir, deadline = tmp / "runs" / name, time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (workdir / "metrics.jsonl").exists() and len(rows(workdir)) >= after_steps:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.kill(int((tmp / "logs" / name / "process_1.pid").read_text()), sig)
    return proc


def read_params(tmp, workdir, env=None):
    """A run's final parameters, read in a fresh process: {path: NumPy array}."""
    code = (
        "import sys, numpy as np, jax; from blt_jax.loading import runs; _, p = runs.read_run(sys.argv[1]); "
        "np.savez(sys.argv[2], **{jax.tree_util.keystr(k): np.asarray(v) "
        "for k, v in jax.tree_util.tree_leaves_with_path(p)})"
    )
    out = tmp / f"params_{str(workdir).replace('/', '_').replace(':', '')}.npz"
    result = subprocess.run(
        [sys.executable, "-c", code, str(workdir), str(out)],
        cwd=tmp,
        capture_output=True,
        env=env or user_env(JAX_PLATFORMS="cpu"),
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
        return dict(saved)


def assert_same_training(got_rows, got_params, want_rows, want_params):
    """Same batches (patch counts, bytes), same losses and parameters up to reduction order (module docstring)."""
    assert [r["step"] for r in got_rows] == [r["step"] for r in want_rows] == list(range(1, STEPS + 1))
    for got, want in zip(got_rows, want_rows):
        assert got["mean_patch_len"] == want["mean_patch_len"], (got["step"], got, want)  # the same global batch
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), (got["step"], got, want)
    assert got_params.keys() == want_params.keys()
    worst = max(float(np.abs(got_params[k] - want_params[k]).max()) for k in want_params)
    assert worst < 2e-5, worst


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("multihost")


@pytest.fixture(scope="module")
def single(tmp):
    """The reference: one `blt-jax train` process over 8 CPU devices (trained once for the suite,
    tests/shared_runs.py): (metrics rows, final parameters)."""
    run = shared_runs.trained(
        ("--config", TINY, *TRAIN), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    return rows(run), read_params(tmp, run)


@pytest.fixture(scope="module")
def straight(tmp):
    """An uninterrupted run as 2 processes x 4 CPU devices, in gs://blt/straight: (metrics rows, the
    run's object names, its data shards' saved state, its final parameters)."""
    server = gcs_server.start(tmp)
    try:
        server.create_bucket("blt")
        env = user_env(**server.client_env())
        result = subprocess.run(
            launcher(tmp, "straight", workdir="gs://blt/straight"),
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        names = server.names("blt", "straight/")
        shards = json.loads(server.read("blt", f"straight/checkpoints/{STEPS}/data_shards/metadata"))
        params = read_params(tmp, "gs://blt/straight", dict(env, JAX_PLATFORMS="cpu"))
        return loss_rows(server.read("blt", "straight/metrics.jsonl").decode()), names, shards, params
    finally:
        server.stop()


def test_one_writer_of_metrics_tensorboard_and_checkpoints(tmp, straight):
    metrics, names, shards, _ = straight
    assert [row["step"] for row in metrics] == list(range(1, STEPS + 1))  # each step once
    assert {name.split("/")[2] for name in names if name.startswith("straight/checkpoints/")} == {str(STEPS)}
    assert len([name for name in names if "tfevents" in name]) == 1
    assert not (tmp / "runs" / "straight").exists()  # nothing written locally
    # The data state of all 8 shards (one per row), 4 from each process, in one file.
    assert shards["num_shards"] == 8 and sorted(map(int, shards["shards"])) == list(range(8))
    for index in range(2):
        log = (tmp / "logs" / "straight" / f"process_{index}.log").read_text()
        assert f"step {STEPS}: loss" in log  # both processes ran every step


def test_two_processes_train_as_one(straight, single):
    assert_same_training(straight[0], straight[3], *single)


def preempt(tmp, name: str, processes: int, after_steps: int) -> int:
    """Runs (or resumes) run `name` as `processes` processes and preempts process 1 once `after_steps`
    steps are logged: every process must stop after the same step, with one checkpoint, and exit 0.
    Returns that step."""
    proc = signal_one_process(tmp, name, after_steps=after_steps, sig=signal.SIGTERM, processes=processes)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    checkpoints = sorted(map(int, os.listdir(tmp / "runs" / name / "checkpoints")))
    step = checkpoints[-1]
    assert after_steps <= step < STEPS, checkpoints
    for index in range(processes):  # every process stopped after the same step, with the checkpoint
        log = (tmp / "logs" / name / f"process_{index}.log").read_text()
        assert f"stopped by SIGTERM at step {step}" in log, log[-3000:]
    return step


@pytest.mark.long  # ~2-3 minutes on 2 cores: the release tier runs it
def test_preempted_on_two_resumed_on_four_preempted_again_resumed_on_one(tmp, single):
    """SIGTERM to one "host" stops all; the run resumes on another process count (2 -> 4 -> 1), each
    taking its data shards out of the checkpoint, and ends as the single process ends."""
    name, logs = "moved", tmp / "logs" / "moved"
    on_two = preempt(tmp, name, processes=2, after_steps=3)
    on_four = preempt(tmp, name, processes=4, after_steps=on_two + 2)
    assert f"resumed from step {on_two}" in (logs / "process_0.log").read_text()
    result = subprocess.run(
        launcher(tmp, name, processes=1), cwd=tmp, env=user_env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resumed from step {on_four}" in (logs / "process_0.log").read_text()
    assert_same_training(rows(tmp / "runs" / name), read_params(tmp, f"runs/{name}"), *single)


def test_a_process_that_dies_stops_the_others_with_its_message(tmp):
    """A process killed mid-run (a host lost) does not leave the other waiting in a collective: the
    launcher stops it within its grace period and names the dead process."""
    proc = signal_one_process(tmp, "lost", after_steps=1, sig=signal.SIGKILL, grace=GRACE)
    killed = time.time()
    out, err = proc.communicate(timeout=300)
    # Not a hang: the survivor, waiting in a collective, is stopped once the launcher's grace is over.
    assert time.time() - killed < GRACE + 60
    assert proc.returncode != 0
    assert "process 1: exit code -9" in out and "process 1 failed" in err, out + err
    assert "process 0: exit code -9, stopped by the launcher" in out, out


def _pass(tmp, out, logs, processes, devices=2):
    """`blt-jax patch` of the test corpus into `out`, as `processes` processes (launcher) or one."""
    command = [
        "blt-jax",
        "patch",
        "--corpus",
        "texts",
        "--out",
        out,
        "--config",
        TINY,
        "--docs-per-shard",
        "2",
        "--chunk",
        "64",
        "--no-progress",
    ]
    return [
        sys.executable,
        LAUNCHER,
        "--num-processes",
        str(processes),
        "--devices",
        str(devices),
        "--logs",
        logs,
        "--",
        *command,
    ]


def _written(log: str) -> list[str]:
    return [line.rsplit("wrote ", 1)[1].split()[0] for line in log.splitlines() if "entropy_pass: wrote" in line]


@pytest.mark.long  # three passes over 60 documents, two of them as 2 processes: the release tier
def test_entropy_pass_shared_by_two_processes_resumes_after_one_is_killed(tmp):
    """Process i computes shards i, i + 2, ...; one killed mid-pass leaves complete shards only, and
    the pass run again computes the missing ones alone, never a finished shard again; the result is
    the single-process pass (entropies stored as float16: equal to 1e-3)."""
    from blt_jax.patching import store

    rng = np.random.default_rng(0)
    (tmp / "texts").mkdir()
    words = ["def", "return", "self", "value", "(", ")", ":", "for", "in", "range", "x", "y", "\n    "]
    for i in range(60):
        (tmp / "texts" / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, size=400)))
    result = subprocess.run(
        _pass(tmp, "entropies_one", "logs/pass_one", 1, devices=4),
        cwd=tmp,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    proc = subprocess.Popen(
        _pass(tmp, "entropies_two", "logs/pass_killed", 2),
        cwd=tmp,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out_dir = tmp / "entropies_two"
    deadline = time.time() + 300
    while not (out_dir / store.shard_record_name(1)).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(int((tmp / "logs" / "pass_killed" / "process_1.pid").read_text()), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "process 1: exit code -9" in out, out + err
    partial = json.loads((out_dir / "manifest.json").read_text())
    assert not partial["complete"] and partial["shards"] == []  # marked as a pass, not yet readable
    finished = {i for i in range(30) if (out_dir / store.shard_record_name(i)).exists()}
    assert 1 in finished and len({i for i in finished if i % 2}) < 15, finished  # killed with some done, not all

    result = subprocess.run(
        _pass(tmp, "entropies_two", "logs/pass_resumed", 2),
        cwd=tmp,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = [_written((tmp / "logs" / "pass_resumed" / f"process_{i}.log").read_text()) for i in range(2)]
    for i in range(2):  # process i computes the missing shards among i, i + 2, ...
        assert all(int(name[10:15]) % 2 == i for name in after[i]), after
    redone = sorted(int(name[10:15]) for name in after[0] + after[1])
    assert not set(redone) & finished and sorted(finished | set(redone)) == list(range(30))  # none twice, none lost

    manifest = json.loads((tmp / "entropies_two" / "manifest.json").read_text())
    reference = json.loads((tmp / "entropies_one" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"] == reference["counts"]
    assert [s["process"] for s in manifest["shards"]] == [i % 2 for i in range(30)]
    for (d1, e1, o1), (d2, e2, o2) in zip(
        store.iter_stored(str(tmp / "entropies_two")), store.iter_stored(str(tmp / "entropies_one")), strict=True
    ):
        assert (d1, o1) == (d2, o2)
        np.testing.assert_allclose(e1.astype(np.float32), e2.astype(np.float32), rtol=1e-3, atol=1e-3)
