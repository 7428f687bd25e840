#!/usr/bin/env python3
"""Train as N JAX processes on this machine, exactly as a TPU pod's hosts run: each process runs the
same `blt-jax train` command (`worker.train_argv`, shared with `tpu.py`'s pod mode) with its own
CPU devices, finds the others through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
and reduces over real collectives (gloo).

  python launch/local_multihost.py --num-processes 2 --devices 4 \\
      --config experiments/tiny.py --workdir runs/two_hosts --config.train.steps=50

Any other `blt-jax` command runs the same way after `--`, e.g. an entropy pass whose shards the
processes share:

  python launch/local_multihost.py --num-processes 2 --devices 2 -- \\
      blt-jax patch --checkpoint runs/entropy_lm --corpus texts/ --out entropies/ --no-progress

Each process's output goes to `<logs>/process_<i>.log` (default `logs/local_multihost/`), its pid to
`<logs>/process_<i>.pid` (`kill -TERM $(cat .../process_1.pid)` preempts one "host"). Ctrl-C or
SIGTERM to the launcher reaches every process as SIGTERM (all checkpoint after the same step and
stop; the same command resumes). If a process fails, the others are stopped and its last lines are
printed. The exit code is the first failing process's, else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from worker import train_argv  # launch/ is the script's directory, first on sys.path

# A process whose peer failed waits in a collective until JAX's heartbeat gives up (minutes): the
# launcher stops it after this grace instead.
PEER_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, index: int, count: int, devices: int, port: int) -> dict:
    """The environment of process `index`: its place in the run and `devices` CPU devices."""
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(count),
        JAX_PROCESS_ID=str(index),
    )
    return env


def _tail(path: str, lines: int = 12) -> str:
    with open(path, errors="replace") as f:
        kept = [line for line in f.read().splitlines() if line.strip() and not line.startswith("[Gloo]")]
    return "\n".join(kept[-lines:])


def run(
    argv: list[str],
    count: int,
    devices: int,
    logs: str,
    timeout: float | None = None,
    peer_grace: float = PEER_GRACE_S,
) -> int:
    """Runs `argv` as `count` processes; returns the first failing exit code, else 0. Once one fails,
    the others get `peer_grace` seconds to end on their own before they are killed."""
    os.makedirs(logs, exist_ok=True)
    port = free_port()
    procs, files = [], []
    for index in range(count):
        log = open(os.path.join(logs, f"process_{index}.log"), "w")
        files.append(log)
        # A session of its own: a Ctrl-C at the terminal reaches the launcher alone, which passes it on
        # as SIGTERM (a process interrupted on its own would leave the others waiting in a collective).
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=process_env(os.environ, index, count, devices, port),
        )
        procs.append(proc)
        with open(os.path.join(logs, f"process_{index}.pid"), "w") as f:  # to signal one "host" by hand
            f.write(f"{proc.pid}\n")

    def forward(signum, frame):  # every process checkpoints after the same step and stops
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    start, failed_at, first, stopped = time.monotonic(), None, None, set()
    try:
        while any(proc.poll() is None for proc in procs):
            codes = [proc.poll() for proc in procs]
            if failed_at is None and any(code not in (None, 0) for code in codes):
                failed_at = time.monotonic()
                first = next(i for i, code in enumerate(codes) if code not in (None, 0))
            late = failed_at is not None and time.monotonic() - failed_at > peer_grace
            if late or (timeout is not None and time.monotonic() - start > timeout):
                for index, proc in enumerate(procs):
                    if proc.poll() is None:
                        proc.kill()
                        stopped.add(index)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for log in files:
            log.close()
    codes = [proc.returncode for proc in procs]
    for index, code in enumerate(codes):
        note = ", stopped by the launcher" if index in stopped else ""
        print(f"process {index}: exit code {code}{note} ({os.path.join(logs, f'process_{index}.log')})")
    failed = [i for i, code in enumerate(codes) if code != 0]
    if not failed:
        return 0
    first = failed[0] if first is None else first  # the process that failed first, not one stopped after it
    print(
        f"process {first} failed; its last lines:\n{_tail(os.path.join(logs, f'process_{first}.log'))}", file=sys.stderr
    )
    return codes[first] if codes[first] > 0 else 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own adds the whole usage)
        self.exit(2, f"local_multihost.py: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    given = argv[argv.index("--") + 1 :] if "--" in argv else None  # any blt-jax command, e.g. an entropy pass
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, required=True, help="JAX processes (the hosts of a pod)")
    parser.add_argument("--devices", type=int, default=1, help="CPU devices of each process")
    parser.add_argument("--config", help="experiment file[:arg] (training)")
    parser.add_argument("--workdir", help="shared by every process: local, ~ or gs:// (training)")
    parser.add_argument("--logs", default=os.path.join("logs", "local_multihost"), help="one log per process")
    parser.add_argument("--timeout", type=float, default=None, help="kill every process after this many seconds")
    parser.add_argument(
        "--peer-grace",
        type=float,
        default=PEER_GRACE_S,
        help=f"seconds the others get to end once one failed, before they are killed (default {PEER_GRACE_S:g})",
    )
    args, rest = parser.parse_known_args(argv)
    if args.num_processes < 1 or args.devices < 1:
        parser.error("--num-processes and --devices must be >= 1")
    if args.peer_grace < 0:
        parser.error("--peer-grace must be >= 0")
    if given is not None:
        if rest or args.config or args.workdir:
            parser.error("give either --config/--workdir (training) or a command after --, not both")
        if not given or given[0] != "blt-jax":
            parser.error("after -- give the command every process runs, starting with blt-jax")
        command = list(given)
    else:
        unknown = [a for a in rest if not a.startswith("--config.") and a not in ("--no-progress", "--noprogress")]
        if unknown:
            parser.error(f"unrecognised arguments: {' '.join(unknown)} (pass --config.a.b=v overrides)")
        if not (args.config and args.workdir):
            parser.error("training needs --config and --workdir (or give any blt-jax command after --)")
        overrides = [a for a in rest if a.startswith("--config.")]
        command = train_argv(args.config, args.workdir, overrides, extra=["--no-progress"])
    command[0] = os.path.join(os.path.dirname(sys.executable), "blt-jax")  # this environment's script
    return run(command, args.num_processes, args.devices, args.logs, args.timeout, args.peer_grace)


if __name__ == "__main__":
    sys.exit(main())
