"""`blt-jax quickstart`: The whole pipeline on the default corpus, resumable."""

from __future__ import annotations

import argparse
import os
import sys

from blt_jax.errors import InputError

NAME = "quickstart"
HELP = "train an entropy LM and a BLT on the default corpus, evaluate, plot, generate"


PRESETS = {"": {"minutes": 12.0, "scale": "small"}, "tiny": {"minutes": 0.01, "scale": "tiny"}}


def preset_defaults() -> dict:
    """Defaults of `blt-jax quickstart`; BLT_JAX_QUICKSTART_PRESET=tiny shrinks them to the tiny
    scale (CI runs the README's command as printed with it)."""
    name = os.environ.get("BLT_JAX_QUICKSTART_PRESET", "")
    if name not in PRESETS:
        raise InputError(f"BLT_JAX_QUICKSTART_PRESET={name!r}: expected one of {', '.join(p for p in PRESETS if p)}")
    return PRESETS[name]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="runs/quickstart", help="where everything goes; a re-run resumes it")
    preset = preset_defaults()
    p.add_argument(
        "--minutes", type=float, default=preset["minutes"], help="wall-clock budget on a 2-core CPU (sets the steps)"
    )
    p.add_argument(
        "--scale", choices=("small", "tiny"), default=preset["scale"], help="model sizes (tiny: CI and notebooks)"
    )
    p.add_argument("--target-patch-length", type=float, default=4.5, help="mean patch length to calibrate to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="STAGE",
        help="run just this stage (repeatable): corpus, entropy_lm, entropy_pass, calibrate, blt, "
        "baseline, plots, generate",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.quickstart import run_quickstart
    from blt_jax.stages import StageInterrupted

    if paths.is_uri(args.workdir):
        raise InputError(f"--workdir {args.workdir}: the quickstart runs on this machine; give a local directory")
    try:
        run_quickstart(
            args.workdir,
            args.minutes,
            args.scale,
            args.target_patch_length,
            args.seed,
            progress=not args.no_progress,
            only=tuple(args.only) if args.only else None,
        )
    except StageInterrupted as e:
        print(f"blt-jax quickstart: {e}", file=sys.stderr)
        return 130  # the shell's code for "interrupted"
    return 0
