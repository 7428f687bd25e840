#!/usr/bin/env python3
"""Launch blt_jax training on Cloud TPUs: one VM, a multi-host pod slice, queued (spot) resources with
automatic resume, or an xpk/GKE workload. Every mode prints the exact commands with --dry-run.

  python launch/tpu.py pod --name blt-1b --zone us-east5-a --accelerator v5p-32 \\
      --config experiments/blt_1b.py:v5p-32 --workdir gs://BUCKET/blt-1b --dry-run

Stages of `vm` / `pod` (choose with --stages, default all but delete):
  create   gcloud compute tpus tpu-vm create (runtime image chosen for the TPU generation)
  copy     scp this repository to every worker
  install  a venv with the pinned jax[tpu] (`pip install -c constraints.txt -e ".[tpu]"`) on every worker
  train    the same `blt-jax train` command on every worker (--worker=all), in tmux, logging to a file
  logs     the last lines of every worker's log, and a copy of them under ./logs/<name>/
  delete   delete the slice

`queued` requests spot capacity as a queued resource whose startup script installs and trains; with
`--watch` it polls the resource and re-queues it after a preemption: training resumes from the newest
checkpoint in the workdir (a GCS path), which every run does automatically. `xpk` creates the same run
as a GKE workload.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

from worker import train_argv  # launch/ is the script's directory, first on sys.path

# TPU VM runtime images by generation (Cloud TPU documentation).
RUNTIME = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
STAGES = ("create", "copy", "install", "train", "logs", "delete")
REMOTE_DIR = "blt_jax"
LOG = "~/blt_jax_train.log"


def runtime_for(accelerator: str) -> str:
    generation = accelerator.split("-")[0]
    if generation not in RUNTIME:
        raise SystemExit(f"unknown accelerator {accelerator!r}; expected e.g. v4-32, v5p-128, v5litepod-16, v6e-8")
    return RUNTIME[generation]


def train_command(args) -> str:
    return (
        f"cd {REMOTE_DIR} && . .venv/bin/activate && {shlex.join(train_argv(args.config, args.workdir, args.override))}"
    )


def install_command() -> str:
    return (
        f"cd {REMOTE_DIR} && python3 -m venv .venv && . .venv/bin/activate && "
        "pip install -q -c constraints.txt -e '.[tpu]'"
    )


def _tpu(args, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", *rest, f"--zone={args.zone}"] + (
        [f"--project={args.project}"] if args.project else []
    )


def _ssh(args, command: str) -> list[str]:
    return _tpu(args, "ssh", args.name, "--worker=all", f"--command={command}")


def vm_commands(args, stages) -> list[list[str]]:
    """Commands of a TPU VM or pod slice, one list per process to run, in order."""
    out = []
    if "create" in stages:
        out.append(
            _tpu(
                args,
                "create",
                args.name,
                f"--accelerator-type={args.accelerator}",
                f"--version={args.runtime or runtime_for(args.accelerator)}",
            )
            + (["--spot"] if args.spot else [])
        )
    if "copy" in stages:
        out.append(_tpu(args, "scp", "--recurse", "--worker=all", ".", f"{args.name}:~/{REMOTE_DIR}"))
    if "install" in stages:
        out.append(_ssh(args, install_command()))
    if "train" in stages:
        # The same command on every host; jax.distributed.initialize() finds the others on TPU VMs.
        out.append(_ssh(args, f"tmux new-session -d -s blt {shlex.quote(train_command(args) + f' 2>&1 | tee {LOG}')}"))
    if "logs" in stages:
        out.append(_ssh(args, f"tail -n 50 {LOG}"))
        out.append(["mkdir", "-p", f"logs/{args.name}"])
        out.append(_tpu(args, "scp", "--worker=all", f"{args.name}:{LOG}", f"logs/{args.name}/"))
    if "delete" in stages:
        out.append(_tpu(args, "delete", args.name, "--quiet"))
    return out


def startup_script(args) -> str:
    """What a queued resource's VMs run at boot: fetch the code, install, train (resuming)."""
    return "\n".join(
        [
            "#!/bin/bash",
            "set -e",
            f"cd ~ && rm -rf {REMOTE_DIR} && gsutil -m cp -r {shlex.quote(args.code)} {REMOTE_DIR}",
            f"({install_command()})",
            f"({train_command(args)}) 2>&1 | tee {LOG}",
        ]
    )


def queued_commands(args) -> list[list[str]]:
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    return [
        qr
        + [
            "create",
            args.name,
            f"--node-id={args.name}",
            f"--accelerator-type={args.accelerator}",
            f"--runtime-version={args.runtime or runtime_for(args.accelerator)}",
            f"--metadata=startup-script={startup_script(args)}",
        ]
        + (["--spot"] if args.spot else [])
        + where,
        qr + ["describe", args.name, "--format=value(state.state)"] + where,
    ]


def xpk_commands(args) -> list[list[str]]:
    return [
        [
            "xpk",
            "workload",
            "create",
            f"--cluster={args.cluster}",
            f"--workload={args.name}",
            f"--tpu-type={args.accelerator}",
            f"--num-slices={args.slices}",
            f"--docker-image={args.image}",
            f"--command={train_command(args).replace(f'cd {REMOTE_DIR} && . .venv/bin/activate && ', '')}",
        ]
        + ([f"--project={args.project}"] if args.project else [])
        + [f"--zone={args.zone}"]
    ]


def show(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def run(commands: list[list[str]], dry_run: bool) -> None:
    for cmd in commands:
        print(("[dry-run] " if dry_run else "+ ") + show(cmd), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)


def watch(args) -> None:
    """Re-queue the resource whenever it is preempted or fails; training resumes from the workdir."""
    create, describe = queued_commands(args)
    qr_delete = [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "delete",
        args.name,
        "--force",
        "--quiet",
        f"--zone={args.zone}",
    ] + ([f"--project={args.project}"] if args.project else [])
    if args.dry_run:
        print(f"[dry-run] every {args.poll}s: {show(describe)}")
        print(f"[dry-run] when SUSPENDED or FAILED: {show(qr_delete)} && {show(create)}")
        return
    while True:
        state = subprocess.run(describe, capture_output=True, text=True).stdout.strip()
        print(time.strftime("%H:%M:%S"), args.name, state or "(absent)", flush=True)
        if state in ("SUSPENDED", "FAILED", ""):
            if state:
                subprocess.run(qr_delete, check=False)
            subprocess.run(create, check=True)
        time.sleep(args.poll)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("vm", "pod", "queued", "xpk"):
        p = sub.add_parser(mode)
        p.add_argument("--name", required=True)
        p.add_argument("--zone", required=True)
        p.add_argument("--project", default=None)
        p.add_argument("--accelerator", required=True, help="e.g. v5litepod-8 (vm), v5p-128 (pod)")
        p.add_argument("--runtime", default=None, help="TPU VM image (default: by generation)")
        p.add_argument("--config", required=True, help="experiment file[:profile]")
        p.add_argument("--workdir", required=True, help="a GCS path on pods: every host writes there")
        p.add_argument("--override", action="append", default=[], help="--config.a.b=v passed to blt-jax train")
        p.add_argument("--spot", action="store_true", help="preemptible (spot) capacity")
        p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
        if mode in ("vm", "pod"):
            p.add_argument(
                "--stages",
                default="create,copy,install,train,logs",
                help=f"comma-separated, in order, from {','.join(STAGES)}",
            )
        if mode == "queued":
            p.add_argument("--code", required=True, help="GCS path of this repository (gsutil cp -r . gs://...)")
            p.add_argument("--watch", action="store_true", help="re-queue after preemption until stopped")
            p.add_argument("--poll", type=int, default=300)
        if mode == "xpk":
            p.add_argument("--cluster", required=True)
            p.add_argument("--image", required=True, help="a container with this repository installed")
            p.add_argument("--slices", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode in ("vm", "pod"):
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            parser.error(f"unknown stages {unknown}; expected {', '.join(STAGES)}")
        if args.mode == "pod" and not args.workdir.startswith("gs://") and "train" in stages:
            parser.error("a pod's hosts share no disk: --workdir must be a gs:// path")
        run(vm_commands(args, stages), args.dry_run)
    elif args.mode == "queued":
        if not args.workdir.startswith("gs://"):
            parser.error("preemptible runs resume from the workdir: --workdir must be a gs:// path")
        if args.watch:
            watch(args)
        else:
            run(queued_commands(args)[:1], args.dry_run)
    else:
        run(xpk_commands(args), args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
