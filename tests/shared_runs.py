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
import time
from pathlib import Path

from user import ROOT, TINY, TPU_NOISE, blt_jax, tiny_train

CACHE = Path(os.environ.get("BLT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/blt_jax/jax_test_cache")))
RUNS = CACHE.parent / "test_runs"

# A tiny BLT trained 24 steps (checkpoints 16, 20 and 24 kept).
TINY_24 = tuple(tiny_train(24))


# The packages whose versions change what a run computes.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def _code_key(args: tuple[str, ...], env: dict[str, str]) -> str:
    """A digest of the command line, its environment settings, the versions of the packages that
    compute the run and every file of blt_jax."""
    from importlib import metadata

    digest = hashlib.sha256("\0".join(args).encode())
    digest.update(repr(sorted(env.items())).encode())
    digest.update(repr([metadata.version(name) for name in PACKAGES]).encode())
    sources = sorted(Path(ROOT, "blt_jax").rglob("*.py")) + [Path(TINY)]
    for path in sources:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def trained(args: tuple[str, ...] = TINY_24, **env: str) -> Path:
    """The workdir of `blt-jax train ARGS` with the environment settings `env` (trained now if no
    session trained it with this code). Read it, or `copy_to` a directory of the test's own: it is
    shared."""
    RUNS.mkdir(parents=True, exist_ok=True)
    key = _code_key(args, env)
    run = RUNS / key
    with open(RUNS / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one trainer; other workers wait for its run
        if (run / "DONE").exists():
            (run / "DONE").touch()  # in use: kept by _prune
        else:
            _prune()
            shutil.rmtree(run, ignore_errors=True)
            with tempfile.TemporaryDirectory(dir=RUNS) as scratch:
                # A relative workdir from a fresh directory, as a user types it.
                result = blt_jax("train", *args, "--workdir", "run", cwd=scratch, **env)
                assert result.returncode == 0, result.stderr[-3000:]
                for noise in TPU_NOISE:
                    assert noise not in result.stderr, result.stderr[-3000:]
                os.replace(Path(scratch) / "run", run)
            (run / "DONE").write_text(" ".join(args) + "\n")
    return run


def _prune(days: float = 14.0) -> None:
    """Deletes runs no session has used for `days` (runs of earlier code stay behind otherwise)."""
    cutoff = time.time() - days * 86400
    for done in RUNS.glob("*/DONE"):
        if done.stat().st_mtime < cutoff:
            shutil.rmtree(done.parent, ignore_errors=True)
            (RUNS / f"{done.parent.name}.lock").unlink(missing_ok=True)


def copy_to(run: Path, destination: Path) -> Path:
    """A test's own copy of a shared run at `destination` (its parents are made)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run, destination, ignore=shutil.ignore_patterns("DONE"))
    return destination
