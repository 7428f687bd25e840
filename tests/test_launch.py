"""The TPU launch script's dry runs: the commands a pod launch would execute, in order."""

import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu.py")


def dry_run(*args):
    out = subprocess.run(
        [sys.executable, SCRIPT, *args, "--dry-run"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return out.returncode, [line.removeprefix("[dry-run] ") for line in out.stdout.splitlines()], out.stderr


POD = [
    "pod",
    "--name",
    "blt-1b",
    "--zone",
    "us-east5-a",
    "--accelerator",
    "v5p-32",
    "--config",
    "experiments/blt_1b.py:v5p-32",
    "--workdir",
    "gs://bucket/blt-1b",
]


def test_pod_dry_run_lists_every_stage_in_order():
    code, lines, err = dry_run(
        *POD, "--stages", "create,copy,install,train,logs,delete", "--override=--config.train.steps=10"
    )
    assert code == 0, err
    words = [shlex.split(line) for line in lines]
    assert words[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "blt-1b"]
    assert "--accelerator-type=v5p-32" in words[0] and "--version=v2-alpha-tpuv5" in words[0]
    assert words[1][4] == "scp" and "--worker=all" in words[1]
    install, train = words[2], words[3]
    assert "--worker=all" in install and "pip install -q -c constraints.txt -e '.[tpu]'" in install[-2]
    assert "--worker=all" in train and train[-2].startswith("--command=tmux new-session -d -s blt")
    assert (
        "blt-jax train --config experiments/blt_1b.py:v5p-32 --workdir gs://bucket/blt-1b --config.train.steps=10"
    ) in train[-2]
    assert any("tail -n 50" in w for w in words[4]) and words[5] == ["mkdir", "-p", "logs/blt-1b"]
    assert words[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "blt-1b"]
    assert all("--zone=us-east5-a" in w for w in words if w[0] == "gcloud")


def test_pod_needs_a_shared_workdir():
    code, _, err = dry_run(*POD[:-1], "/tmp/local")
    assert code == 2 and "gs://" in err


def test_queued_resource_resumes_after_preemption():
    code, lines, err = dry_run(
        "queued",
        "--name",
        "q",
        "--zone",
        "z",
        "--accelerator",
        "v5litepod-16",
        "--spot",
        "--config",
        "experiments/tiny.py",
        "--workdir",
        "gs://b/t",
        "--code",
        "gs://b/code",
        "--watch",
    )
    assert code == 0, err
    text = "\n".join(lines)
    assert "queued-resources describe q" in text and "when SUSPENDED or FAILED" in text
    assert "queued-resources create q" in text and "--spot" in text
    assert "blt-jax train --config experiments/tiny.py --workdir gs://b/t" in text


def test_xpk_workload():
    code, lines, err = dry_run(
        "xpk",
        "--name",
        "w",
        "--zone",
        "z",
        "--accelerator",
        "v5p-128",
        "--cluster",
        "c",
        "--image",
        "img",
        "--config",
        "experiments/blt_7b.py:v5p-128",
        "--workdir",
        "gs://b/7b",
    )
    assert code == 0, err
    words = shlex.split(lines[0])
    assert words[:3] == ["xpk", "workload", "create"] and "--tpu-type=v5p-128" in words
    assert "--command=blt-jax train --config experiments/blt_7b.py:v5p-128 --workdir gs://b/7b" in words


def test_the_pod_and_the_local_launcher_run_one_worker_command(monkeypatch):
    """`tpu.py pod` and `local_multihost.py` build their processes' command with the same function."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "launch"))
    import local_multihost
    import worker

    seen = {}
    monkeypatch.setattr(local_multihost, "run", lambda argv, *rest: seen.setdefault("argv", argv) and 0)
    local_multihost.main(
        [
            "--num-processes",
            "2",
            "--config",
            "experiments/blt_1b.py:v5p-32",
            "--workdir",
            "gs://bucket/blt-1b",
            "--config.train.steps=10",
        ]
    )
    expected = worker.train_argv("experiments/blt_1b.py:v5p-32", "gs://bucket/blt-1b", ["--config.train.steps=10"])
    assert seen["argv"][1:] == [*expected[1:], "--no-progress"]  # [0]: this environment's blt-jax script
    code, lines, err = dry_run(*POD, "--stages", "train", "--override=--config.train.steps=10")
    assert code == 0, err
    assert shlex.join(expected) in lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["--config", "experiments/tiny.py", "--workdir", "w"],
            "the following arguments are required: --num-processes",
        ),
        (["--num-processes", "0", "--config", "c.py", "--workdir", "w"], "--num-processes and --devices must be >= 1"),
        (
            ["--num-processes", "2", "--peer-grace", "-1", "--config", "c.py", "--workdir", "w"],
            "--peer-grace must be >= 0",
        ),
        (
            ["--num-processes", "2", "--config", "c.py", "--workdir", "w", "--steps", "3"],
            "unrecognised arguments: --steps",
        ),
        (["--num-processes", "2", "--config", "c.py"], "training needs --config and --workdir"),
        (["--num-processes", "2", "--", "patch", "--corpus", "c"], "after -- give the command every process runs"),
        (
            ["--num-processes", "2", "--workdir", "w", "--", "blt-jax", "patch"],
            "either --config/--workdir (training) or",
        ),
    ],
)
def test_the_local_launcher_answers_bad_input_in_one_line(tmp_path, args, needle):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "local_multihost.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
