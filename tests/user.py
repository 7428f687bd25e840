"""Running `blt-jax` as a user does: the installed console script, in a directory of the test's
choosing, with the environment a user has (no JAX_PLATFORMS), HOME optionally moved so `~` paths
land in the test's directory."""

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(sys.executable), "blt-jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli_forks.py")
TINY = os.path.join(ROOT, "experiments", "tiny.py")
# What libtpu prints when it starts on a host without TPUs: a user reads it as a failure.
TPU_NOISE = ("E0000", "host bounds", "TPU_WORKER_HOSTNAMES", "libtpu")


# What the test session sets for itself (conftest) and a user's shell does not have.
SESSION_ONLY = ("JAX_PLATFORMS", "XLA_FLAGS", "ALLOW_MULTIPLE_LIBTPU_LOAD")


def user_env(home=None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY}
    # Compiled programs are shared with the rest of the suite (XLA compiles slowly on 2 cores).
    env.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        os.environ.get("BLT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/blt_jax/jax_test_cache")),
    )
    # Every program is kept, not only those that took a second to compile: a test's command lines
    # repeat the same small programs in many processes.
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if home is not None:
        env["HOME"] = str(home)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def tiny_train(steps: int) -> list[str]:
    """`blt-jax train` arguments of a short tiny run: checkpoints every 4 steps (the last 3 kept),
    metrics every step, one evaluation batch at the end and none on the way."""
    return [
        "--config",
        TINY,
        f"--config.train.steps={steps}",
        "--config.train.warmup_steps=2",
        "--config.train.checkpoint_every=4",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.train.eval_batches=1",
        "--no-progress",
    ]


def _run(argv: list, cwd, home, timeout: float, extra: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv],
        input=stdin,
        cwd=cwd,
        env=user_env(home, **extra),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        text=True,
        timeout=timeout,
    )


def blt_jax(*args, cwd, home=None, timeout=1500, **extra) -> subprocess.CompletedProcess:
    """Runs `blt-jax ARGS` to the end in `cwd`; returns the completed process (text output)."""
    return _run([SCRIPT, *args], cwd, home, timeout, extra)


def blt_jax_many(commands, cwd, home=None, timeout=1500, **extra) -> list[subprocess.CompletedProcess]:
    """Runs each `blt-jax ARGS` of `commands` to the end in `cwd`, as `blt_jax` does, but in forked
    children of one interpreter that imported the CLI once (tests/cli_forks.py): for walks of many
    quick command lines, where starting Python and importing JAX would be most of the time."""
    commands = [[str(a) for a in args] for args in commands]
    result = _run([sys.executable, FORKS], cwd, home, timeout, extra, stdin=json.dumps(commands))
    assert result.returncode == 0, result.stderr[-3000:]
    return [
        subprocess.CompletedProcess(["blt-jax", *args], r["returncode"], r["stdout"], r["stderr"])
        for args, r in zip(commands, json.loads(result.stdout), strict=True)
    ]


def start(*args, cwd, home=None, **extra) -> subprocess.Popen:
    """Starts `blt-jax ARGS` in `cwd` (to be signalled or killed by the test)."""
    return subprocess.Popen(
        [SCRIPT, *map(str, args)],
        cwd=cwd,
        env=user_env(home, **extra),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
