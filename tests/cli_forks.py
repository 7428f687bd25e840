"""Runs many `blt-jax` command lines for the price of one interpreter start: `blt_jax.cli` (what the
console script imports) is imported once, then each command line runs in a forked child with its
own stdout and stderr files, and ends as the console script does (exit handlers run, then the exit
code). The child is a real process: an `os._exit` in the CLI, a crash or a hang ends that command
alone.

Used by `user.blt_jax_many`: reads a JSON list of argument lists on stdin, writes a JSON list of
{"returncode", "stdout", "stderr"} on stdout. Importing jax starts no backend, so forking after the
import is safe; each child starts its own.
"""

import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
import time

import blt_jax.cli

TIMEOUT = float(os.environ.get("BLT_JAX_FORK_TIMEOUT", "600"))


def _child(argv: list[str], out: str, err: str) -> None:
    """Runs one command line with fd 1 and 2 on files; never returns."""
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = ["blt-jax", *argv]
    code = 1
    try:
        blt_jax.cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (a bug: its traceback, as the interpreter prints it)
        import traceback

        traceback.print_exc()
    try:
        atexit._run_exitfuncs()  # the exit handlers a normal interpreter exit runs
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(argv: list[str], scratch: str, index: int) -> dict:
    out, err = os.path.join(scratch, f"{index}.out"), os.path.join(scratch, f"{index}.err")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, out, err)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    read = lambda path: open(path, encoding="utf-8", errors="replace").read()
    return {"returncode": code, "stdout": read(out), "stderr": read(err)}


def main() -> None:
    cases = json.load(sys.stdin)
    # Not a TemporaryDirectory: its finalizer is an exit handler, which each child runs.
    scratch = tempfile.mkdtemp(prefix="blt_jax_forks_")
    try:
        results = [_run(list(map(str, argv)), scratch, i) for i, argv in enumerate(cases)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
