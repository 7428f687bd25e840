"""The training loop: exact resume, corrupt checkpoints, preemption, overfitting, init_from, eval."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from blt_jax.experiment import load_experiment
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.loading.runs import load_initial_params, read_run
from blt_jax.train.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.py")


def experiment(**overrides):
    raw = load_experiment(TINY)
    raw.train.update(dict(steps=12, warmup_steps=2, log_every=1, eval_every=0, checkpoint_every=6))
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return experiment_from_dict(raw)


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f) if "loss" in row}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted 12-step run, shared by the tests that only read its results."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    return workdir, train_and_evaluate(experiment(), workdir, progress=False)


def test_resume_after_an_interruption_is_bitwise_exact(tmp_path, straight, monkeypatch):
    """A run stopped by SIGTERM during step 6 (as on a TPU preemption: it checkpoints step 6 and
    returns) and started again on its workdir ends exactly where an uninterrupted run does."""
    import threading

    from blt_jax.train import loop

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    straight_dir, straight = straight
    crashed = str(tmp_path / "crashed")
    steps = []

    class PreemptedTrainer(loop.TrainPrograms):
        def step(self, state, batch):
            steps.append(len(steps) + 1)
            if len(steps) == 6:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().step(state, batch)

    with monkeypatch.context() as patched:
        patched.setattr(loop, "TrainPrograms", PreemptedTrainer)
        first = train_and_evaluate(experiment(), crashed, progress=False)
    assert first["preempted"] and first["stop_signal"] == "SIGTERM"
    assert first["step"] == 6 and sorted(os.listdir(os.path.join(crashed, "checkpoints"))) == ["6"]
    resumed = train_and_evaluate(experiment(), crashed, progress=False)
    assert resumed["start_step"] == 6 and resumed["step"] == 12
    a, b = losses(straight_dir), losses(crashed)
    assert [a[s] for s in range(7, 13)] == [b[s] for s in range(7, 13)]  # same losses, bit for bit
    # The final parameters, as both runs saved them in their step-12 checkpoints.
    for x, y in zip(
        jax.tree_util.tree_leaves(read_run(straight_dir)[1]), jax.tree_util.tree_leaves(read_run(crashed)[1])
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed["eval"]["eval_bpb"] == straight["eval"]["eval_bpb"]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    train_and_evaluate(experiment(), workdir, progress=False)
    state_dir = os.path.join(workdir, "checkpoints", "12", "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    summary = train_and_evaluate(experiment(train__steps=14), workdir, progress=False)
    assert summary["start_step"] == 6 and summary["step"] == 14
    assert "checkpoint 12" in caplog.text and "unreadable" in caplog.text


def test_tiny_model_overfits_a_small_text(tmp_path):
    corpus = tmp_path / "text"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The Byte Latent Transformer groups bytes into patches. " * 3)
    exp = experiment(
        train__steps=60,
        train__warmup_steps=10,
        train__learning_rate=0.01,
        train__checkpoint_every=0,
        train__log_every=10,
        data__source=str(corpus),
        eval__source=str(corpus),
    )
    summary = train_and_evaluate(exp, str(tmp_path / "run"), progress=False)
    first, last = losses(str(tmp_path / "run"))[10], summary["metrics"]["loss"]
    assert first > 1.0 and last < 0.2, (first, last)  # nats per byte; ln(260) = 5.56 at the start
    assert summary["eval"]["eval_bpb"] < 0.3


def test_workdir_files(straight):
    workdir = straight[0]
    with open(os.path.join(workdir, "config.json")) as f:
        assert experiment_from_dict(json.load(f)) == experiment()
    with open(os.path.join(workdir, "shardings.json")) as f:
        shardings = json.load(f)
    assert shardings["params"]["['global_transformer']['layers_0']['attention']['wq']"]["shape"] == [64, 4, 16]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    for key in (
        "step",
        "loss",
        "bpb",
        "bytes_per_s",
        "mean_patch_len",
        "patches_per_s",
        "grad_norm",
        "lr",
        "flops_per_byte",
        "mfu",
    ):
        assert key in rows[0], key
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    exp, params = read_run(workdir)
    assert exp.train.steps == 12 and "local_encoder" in params


def test_init_from_a_saved_model(tmp_path):
    from blt_jax.api import BLTModel

    exp = experiment()
    model = BLTModel.random(exp.model, seed=7)
    model.save(str(tmp_path / "pretrained"))
    params = load_initial_params(exp.model, str(tmp_path / "pretrained"))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(jax.device_get(model.params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def cli(*args, **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "blt_jax", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "run"
    proc = cli(
        "train",
        "--config",
        "experiments/tiny.py",
        "--workdir",
        str(workdir),
        "--config.train.steps=100000",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=0",
        "--config.train.eval_every=0",
        "--noprogress",
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
    assert len(steps) == 1 and steps[0] >= 3


def test_cli_bad_config_and_eval(tmp_path, straight):
    proc = cli(
        "train",
        "--config",
        "experiments/tiny.py",
        "--workdir",
        str(tmp_path / "x"),
        "--config.train.warmup_steps=99999",
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "train.warmup_steps" in err
    proc = cli("eval", "--checkpoint", straight[0], "--batches", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "bits per byte" in out and "mean patch length" in out


def test_first_ctrl_c_asks_for_a_checkpoint_second_one_interrupts():
    """SIGINT takes the SIGTERM path (checkpoint after the step; covered end to end above) once; a
    second SIGINT raises at once; the previous handlers come back afterwards."""
    import threading

    from blt_jax.train.loop import _Preemption

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with _Preemption() as preemption:
        signal.raise_signal(signal.SIGINT)  # the handler has run when this returns
        assert preemption.requested and preemption.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the handler has run when this returns
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with _Preemption() as preemption:
        signal.raise_signal(signal.SIGTERM)  # the handler has run when this returns
        assert preemption.requested and preemption.signal_name == "SIGTERM"


def test_throughput_windows_exclude_evaluation_time(tmp_path, monkeypatch):
    """A fake clock: every train step takes 1 s, every evaluation 100 s. Each logged bytes/s must be
    bytes per step / 1 s, the row right after an evaluation included (its window keeps the steps it
    already held, and its clock skips the evaluation)."""
    from types import SimpleNamespace

    from blt_jax.metrics import throughput
    from blt_jax.train import loop, step_log

    clock = [0.0]

    class TimedTrainer(loop.TrainPrograms):
        def step(self, state, batch):
            clock[0] += 1.0
            return super().step(state, batch)

        def evaluate(self, params, batches):
            clock[0] += 100.0
            return super().evaluate(params, batches)

    monkeypatch.setattr(loop, "TrainPrograms", TimedTrainer)
    fake = SimpleNamespace(perf_counter=lambda: clock[0])
    for module in (loop, step_log, throughput):  # the loop times evaluations, the log and its window steps
        monkeypatch.setattr(module, "time", fake)
    exp = experiment(
        train__steps=30, train__log_every=10, train__eval_every=9, train__eval_batches=1, train__checkpoint_every=0
    )
    train_and_evaluate(exp, str(tmp_path / "run"), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    rates = {r["step"]: r["bytes_per_s"] for r in rows if r.get("bytes_per_s")}
    assert sorted(rates) == [10, 20, 30], rates
    # Rows of 8 x 128 bytes, packed full: 1,024 bytes per step, one step per second. (Before, the row
    # after an evaluation counted the steps before it in the time after it: 1,137 to 10,240 bytes/s.)
    assert rates == {10: 1024.0, 20: 1024.0, 30: 1024.0}, rates
