"""Training as several JAX processes on one machine, as a pod's hosts run it (`launch/local_multihost.py`:
the same `blt-jax train` command per process, real collectives over gloo): one writer of metrics and
checkpoints, SIGTERM to one process stops every process after the same step with a complete
checkpoint, and the same command resumes to where an uninterrupted run ends. The uninterrupted run's
workdir is in a bucket of a local Cloud Storage server, the interrupted one's a shared local directory."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import gcs_server
from user import TINY, user_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_multihost.py")
STEPS = 10
TRAIN = [f"--config.train.steps={STEPS}", "--config.train.warmup_steps=2", "--config.train.log_every=1",
         "--config.train.checkpoint_every=100", "--config.train.eval_every=0", "--config.train.eval_batches=1"]


def launcher(tmp, name, processes=2, devices=4, workdir=None):
    """The launcher's command line for a run `name` (workdir `runs/<name>` unless given, logs under `tmp`)."""
    return [sys.executable, LAUNCHER, "--num-processes", str(processes), "--devices", str(devices), "--config", TINY,
            "--workdir", workdir or f"runs/{name}", "--logs", f"logs/{name}", *TRAIN]


def loss_rows(text: str) -> list[dict]:
    return [row for row in map(json.loads, text.splitlines()) if "loss" in row]


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return loss_rows(f.read())


def signal_one_process(tmp, name: str, after_steps: int, sig: int) -> subprocess.Popen:
    """Starts run `name` as 2 processes and, once `after_steps` steps are logged, sends `sig` to
    process 1 alone; returns the launcher's process."""
    proc = subprocess.Popen(launcher(tmp, name), cwd=tmp, env=user_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    workdir, deadline = tmp / "runs" / name, time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (workdir / "metrics.jsonl").exists() and len(rows(workdir)) >= after_steps:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.kill(int((tmp / "logs" / name / "process_1.pid").read_text()), sig)
    return proc


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("multihost")


@pytest.fixture(scope="module")
def straight(tmp):
    """An uninterrupted run as 2 processes x 4 CPU devices, in gs://blt/straight: (metrics rows, the
    run's object names)."""
    server = gcs_server.start(tmp)
    try:
        server.create_bucket("blt")
        result = subprocess.run(launcher(tmp, "straight", workdir="gs://blt/straight"), cwd=tmp,
                                env=user_env(**server.client_env()), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        return loss_rows(server.read("blt", "straight/metrics.jsonl").decode()), server.names("blt", "straight/")
    finally:
        server.stop()


def test_one_writer_of_metrics_and_checkpoints(tmp, straight):
    metrics, names = straight
    assert [row["step"] for row in metrics] == list(range(1, STEPS + 1))  # each step once
    assert {name.split("/")[2] for name in names if name.startswith("straight/checkpoints/")} == {str(STEPS)}
    assert not (tmp / "runs" / "straight").exists()  # nothing written locally
    for index in range(2):
        log = (tmp / "logs" / "straight" / f"process_{index}.log").read_text()
        assert f"step {STEPS}: loss" in log  # both processes ran every step


def test_sigterm_to_one_process_stops_all_at_one_step_and_the_run_resumes(tmp, straight):
    proc = signal_one_process(tmp, "preempted", after_steps=3, sig=signal.SIGTERM)  # one "host" is preempted
    workdir, logs = tmp / "runs" / "preempted", tmp / "logs" / "preempted"
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    stopped = os.listdir(workdir / "checkpoints")
    assert len(stopped) == 1 and 3 <= int(stopped[0]) < STEPS, stopped
    for index in range(2):  # every process stopped after the same step, with the checkpoint
        log = (logs / f"process_{index}.log").read_text()
        assert f"stopped by SIGTERM at step {stopped[0]}" in log, log[-3000:]

    result = subprocess.run(launcher(tmp, "preempted"), cwd=tmp, env=user_env(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resumed from step {stopped[0]}" in (logs / "process_0.log").read_text()
    resumed, expected = rows(workdir), straight[0]
    assert [row["step"] for row in resumed] == list(range(1, STEPS + 1))
    for got, want in zip(resumed, expected):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-6), (got["step"], got, want)


def test_a_process_that_dies_stops_the_others_with_its_message(tmp):
    """A process killed mid-run (a host lost) does not leave the other waiting in a collective: the
    launcher stops it within its grace period and names the dead process."""
    proc = signal_one_process(tmp, "lost", after_steps=1, sig=signal.SIGKILL)
    killed = time.time()
    out, err = proc.communicate(timeout=300)
    assert time.time() - killed < 120  # not a hang: the survivor is stopped after the launcher's grace
    assert proc.returncode != 0
    assert "process 1: exit code -9" in out and "process 1 failed" in err, out + err
