"""Trained runs that several test files read, trained once and shared.

A run is trained by `blt-jax train` the first time any test asks for it (in any xdist worker: a file
lock makes the others wait), and kept under the suite's cache directory, keyed by everything that
makes it: the command line, the experiment file and the source of `blt_jax`. The next session reuses
it until that code changes. Tests get their own copy (`copy_to`), so nothing a test does to a run
reaches another test.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from user import ROOT, TINY, TPU_NOISE, blt_jax

CACHE = Path(os.environ.get("BLT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/blt_jax/jax_test_cache")))
RUNS = CACHE.parent / "test_runs"

# A tiny BLT trained 24 steps: checkpoints every 4 steps (the last 3 kept, so 16, 20 and 24), metrics
# every step, one evaluation batch at the end.
TINY_24 = (
    "--config",
    TINY,
    "--config.train.steps=24",
    "--config.train.warmup_steps=2",
    "--config.train.checkpoint_every=4",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    "--config.train.eval_batches=1",
    "--no-progress",
)


def _code_key(args: tuple[str, ...]) -> str:
    """A digest of the command line and of every file the run's result depends on."""
    digest = hashlib.sha256("\0".join(args).encode())
    sources = sorted(Path(ROOT, "blt_jax").rglob("*.py")) + [Path(TINY)]
    for path in sources:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def trained(args: tuple[str, ...] = TINY_24) -> Path:
    """The workdir of `blt-jax train ARGS` (trained now if no session trained it with this code).
    Read it, or `copy_to` a directory of the test's own: it is shared."""
    RUNS.mkdir(parents=True, exist_ok=True)
    key = _code_key(args)
    run = RUNS / key
    with open(RUNS / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one trainer; other workers wait for its run
        if not (run / "DONE").exists():
            shutil.rmtree(run, ignore_errors=True)
            with tempfile.TemporaryDirectory(dir=RUNS) as scratch:
                # A relative workdir from a fresh directory, as a user types it.
                result = blt_jax("train", *args, "--workdir", "run", cwd=scratch)
                assert result.returncode == 0, result.stderr[-3000:]
                for noise in TPU_NOISE:
                    assert noise not in result.stderr, result.stderr[-3000:]
                os.replace(Path(scratch) / "run", run)
            (run / "DONE").write_text(" ".join(args) + "\n")
    return run


def copy_to(run: Path, destination: Path) -> Path:
    """A test's own copy of a shared run at `destination` (its parents are made)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run, destination, ignore=shutil.ignore_patterns("DONE"))
    return destination
